import ArgumentParser
import Foundation
import Probe
import Quant
import Formats

extension PlateauMetric: ExpressibleByArgument {}
extension ProbeRecipe: ExpressibleByArgument {}

/// `--layers all|LIST`: layer numbers as stored in the shards, e.g. `0-9,20,30-39`.
struct LayerSelection: ExpressibleByArgument {
    let layers: [Int]?
    init?(argument: String) {
        if argument == "all" { layers = nil; return }
        var out: [Int] = []
        for part in argument.split(separator: ",") {
            let ends = part.split(separator: "-", omittingEmptySubsequences: false)
            if ends.count == 1, let v = Int(ends[0]), v >= 0 { out.append(v) }
            else if ends.count == 2, let a = Int(ends[0]), let b = Int(ends[1]), a >= 0, a <= b { out += Array(a...b) }
            else { return nil }
        }
        guard !out.isEmpty, Set(out).count == out.count else { return nil }
        layers = out
    }
    init() { layers = nil }

    var defaultValueDescription: String { layers.map { $0.map(String.init).joined(separator: ",") } ?? "all" }
}

/// `--max-memory 8G`.
struct ByteSize: ExpressibleByArgument {
    let bytes: Int
    init?(argument: String) {
        guard let b = parseByteSize(argument) else { return nil }
        bytes = b
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train one reading probe per layer on shards (the reference recipe, every layer in one pass).",
        discussion: """
        Reads shard directories written by `extract` or `shards import`, splits the rows as scikit-learn's \
        train_test_split(range(N), test_size=0.2, stratify=labels, random_state=12345) would, and trains \
        Linear(d_model, classes) + sigmoid per layer with BCELoss, Adam (coupled weight decay) and \
        ReduceLROnPlateau, exactly as the PyTorch recipe does (docs/training.md). Every batch updates the probes \
        of all layers, so the data is read once per epoch.

        Writes to --out: probe_at_layer_{L}.pth (best) and probe_at_layer_{L}_final.pth (PyTorch state_dicts, \
        torch.load(path, weights_only=True)), probes.safetensors, probe_training_metrics.csv, split.json, \
        layer_summary.csv (accuracy with a 95% Wilson interval per layer), probe_training_summary.md (with baselines \
        and warnings: collapsed learning rate, underfit, overfit, small classes, optimistic best layer) and \
        accuracy_by_layer.svg. --test-fraction, --cv and --seeds say how far the numbers can be trusted (docs/training.md). Nothing is written until the end (a temporary \
        directory is renamed into place).

        Example: llamaprobe train --shards shards/ --out probe_checkpoints/reading_probe
        Parity run: llamaprobe train --shards shards/ --out out/ --no-shuffle --split split.json --init init.safetensors
        """)

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Shard directories (one or more), e.g. --shards shards-a shards-b.", valueName: "dir"))
    var shards: [String]

    @Option(help: ArgumentHelp("Output directory (must be new or empty unless --overwrite), e.g. --out probe_checkpoints/reading_probe.", valueName: "dir"))
    var out = "probe_checkpoints/reading_probe"

    /// The reference recipe's hyperparameters: every default below is read from the library's TrainConfig.
    static let defaults = TrainConfig()

    @Option(help: "Epochs per layer, e.g. --epochs 50.")
    var epochs = Self.defaults.epochs

    @Option(help: ArgumentHelp("Adam learning rate, e.g. --lr 1e-3.", valueName: "lr"))
    var lr = Self.defaults.learningRate

    @Option(help: "Adam beta1, e.g. --beta1 0.9.")
    var beta1 = Self.defaults.adam.beta1

    @Option(help: "Adam beta2, e.g. --beta2 0.95.")
    var beta2 = Self.defaults.adam.beta2

    @Option(name: .customLong("weight-decay"), help: "Coupled L2 weight decay added to the gradient (Adam, not AdamW), e.g. --weight-decay 0.1.")
    var weightDecay = Self.defaults.adam.weightDecay

    @Flag(name: .customLong("no-bias-decay"), help: "Exempt the biases from weight decay (the reference decays weights and biases).")
    var noBiasDecay = false

    @Option(name: .customLong("batch-size"), help: "Training batch size, e.g. --batch-size 200.")
    var batchSize = Self.defaults.batchSize

    @Option(name: .customLong("val-batch-size"), help: "Validation batch size (matters only for the validation loss), e.g. --val-batch-size 400.")
    var valBatchSize = Self.defaults.valBatchSize

    @Option(name: .customLong("val-every"), help: "Validate every N epochs (best checkpoint on strict improvement), e.g. --val-every 10.")
    var valEvery = Self.defaults.valEvery

    @Option(name: .customLong("val-fraction"), help: "Validation share of the stratified split, e.g. --val-fraction 0.2.")
    var valFraction = Self.defaults.valFraction

    @Option(help: "Seed of the split (numpy RandomState), of the initial weights and of the shuffling, e.g. --seed 12345.")
    var seed = Self.defaults.seed

    @Option(name: .customLong("plateau-factor"), help: "ReduceLROnPlateau factor, e.g. --plateau-factor 0.75.")
    var plateauFactor = Self.defaults.plateauFactor

    @Option(name: .customLong("plateau-patience"), help: "ReduceLROnPlateau patience in epochs, e.g. --plateau-patience 0.")
    var plateauPatience = Self.defaults.plateauPatience

    @Option(name: .customLong("plateau-on"), help: "Loss the scheduler watches: train (epoch mean training loss) or val (implies --val-every 1), e.g. --plateau-on val.")
    var plateauOn: PlateauMetric = Self.defaults.plateauOn

    @Option(help: ArgumentHelp("Split file {\"train\": [rows…], \"val\": [rows…]} to use instead of computing it, e.g. --split out/split.json.", valueName: "file"))
    var split: String?

    @Flag(name: .customLong("no-shuffle"), help: "Batches follow the split's train order (deterministic mode for parity with PyTorch).")
    var noShuffle = false

    @Option(name: .customLong("init"), help: ArgumentHelp("Initial weights: a safetensors file with layer{L}.weight [classes, d_model] and layer{L}.bias [classes], e.g. --init init.safetensors.", valueName: "file"))
    var initPath: String?

    @Option(help: ArgumentHelp("Layers to train: all, or a list of layer numbers and ranges as stored in the shards, e.g. --layers 0-9,20,39.", valueName: "all|list"))
    var layers = LayerSelection()

    @Option(help: ArgumentHelp("Hook point to train on, one the shards hold (extract --hooks), e.g. --hook mlp_out; recorded with the probes, and predict reads it.", valueName: "name"))
    var hook = ReadoutRecipe.defaultHook

    @Option(help: "Threads (the default is this machine's core count), e.g. --threads 2.")
    var threads = Self.defaults.threads

    @Option(name: .customLong("max-memory"), help: ArgumentHelp("Keep the decoded data in memory up to this size, else stream the shards every epoch (default: 70% of RAM), e.g. --max-memory 8G.", valueName: "size"))
    var maxMemory: ByteSize?

    @Flag(name: .customLong("allow-empty-classes"), help: "Train even when a class of the shards' label set has no rows (its output is then trained as always 0); without it such data is refused.")
    var allowEmptyClasses = false

    @Flag(help: "Replace an existing non-empty --out directory (the new one is swapped in whole at the end).")
    var overwrite = false

    @Option(name: .customLong("test-fraction"), help: ArgumentHelp("Set this share of the rows aside first as a stratified held-out test set; the best layer is chosen on validation and its test accuracy reported, e.g. --test-fraction 0.2.", valueName: "f"))
    var testFraction: Double?

    @Option(name: .customLong("cv"), help: ArgumentHelp("Stratified K-fold cross-validation (scikit-learn's StratifiedKFold(shuffle=True, random_state=--seed)); per-fold accuracies in cv.csv, mean ± sd per layer, e.g. --cv 5.", valueName: "k"))
    var cv: Int?

    @Option(help: ArgumentHelp("Train K runs with init/shuffle seeds --seed … --seed+K−1 on each split; mean ± sd per layer, e.g. --seeds 5.", valueName: "k"))
    var seeds = 1

    @Option(help: ArgumentHelp("Probes to fit: reference (the PyTorch recipe), logistic (standardized multinomial logistic regression with L2, as scikit-learn's LogisticRegression; its probes are written), or both (reference probes written, logistic reported beside them), e.g. --recipe both.", valueName: "reference|logistic|both"))
    var recipe: ProbeRecipe = .reference

    @Option(name: .customLong("l2-strength"), help: ArgumentHelp("The logistic regression's C (scikit-learn's, the inverse of the penalty) instead of choosing it by 5-fold cross-validation, e.g. --l2-strength 1.", valueName: "C"))
    var l2Strength: Double?

    @Option(name: .customLong("early-stopping"), help: ArgumentHelp("Stop a layer after N validations without a new best accuracy (off by default), e.g. --early-stopping 3.", valueName: "n"))
    var earlyStopping: Int?

    func run() throws {
        var o = TrainJobOptions(shardDirectories: shards, outDirectory: out, maxMemory: maxMemory?.bytes ?? TrainJob.defaultMaxMemory)
        var c = TrainConfig()
        c.epochs = epochs; c.learningRate = lr; c.adam.beta1 = beta1; c.adam.beta2 = beta2; c.adam.weightDecay = weightDecay
        c.adam.biasDecay = !noBiasDecay; c.batchSize = batchSize; c.valBatchSize = valBatchSize; c.valEvery = valEvery
        c.valFraction = valFraction; c.seed = seed; c.plateauFactor = plateauFactor; c.plateauPatience = plateauPatience
        c.plateauOn = plateauOn; c.shuffle = !noShuffle; c.threads = threads; c.earlyStopping = earlyStopping
        o.config = c
        o.layers = layers.layers
        o.hook = hook
        o.splitPath = split
        o.initPath = initPath
        o.overwrite = overwrite
        o.allowEmptyClasses = allowEmptyClasses
        o.testFraction = testFraction; o.cvFolds = cv; o.seeds = seeds; o.recipe = recipe; o.l2Strength = l2Strength
        let bar = ProgressLine()
        let result = try TrainJob.run(o, log: { bar.clear(); note($0) }, progress: { bar.update($0) })
        bar.finish()
        let best = result.outcomes.first { $0.layer == result.bestLayer }!
        let bestText = best.bestEpoch.map { String(format: "val accuracy %.4f at epoch %d", best.bestAccuracy, $0) } ?? "no validation improved on 0"
        note(String(format: "trained %d layers in %.2f s (data %@, loaded in %.1f s%@); best layer %d (%@) -> %@",
                    result.outcomes.count, result.trainSeconds, formatBytes(result.dataBytes), result.loadSeconds,
                    result.streamed ? ", streamed" : "", result.bestLayer, bestText, out))
    }
}

/// The epoch bar on a terminal; periodic plain lines otherwise.
final class ProgressLine {
    let tty = isatty(2) != 0
    var start: Date?
    var lastPrint = Date.distantPast
    var shown = false

    func update(_ p: TrainProgress) {
        let now = Date()
        if start == nil { start = now }
        let elapsed = now.timeIntervalSince(start!)
        let done = Double(p.epoch - 1) + Double(p.batch) / Double(max(p.batches, 1))
        let eta = done > 0 ? elapsed / done * (Double(p.epochs) - done) : 0
        if tty {
            guard now.timeIntervalSince(lastPrint) >= 0.1 || (p.batch == p.batches && p.epoch == p.epochs) else { return }
            let width = 24
            let filled = Int(Double(width) * done / Double(p.epochs))
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            let line = String(format: "\r\u{1B}[2Kepoch %d/%d %@ batch %d/%d  mean loss %.5f  %.0f s, ETA %.0f s",
                              p.epoch, p.epochs, bar, p.batch, p.batches, p.meanLoss, elapsed, eta)
            FileHandle.standardError.write(Data(line.utf8))
            shown = true
        } else {
            let last = p.batch == p.batches && p.epoch == p.epochs
            guard now.timeIntervalSince(lastPrint) >= 5 || last else { return }
            note(String(format: "epoch %d/%d, batch %d/%d, mean loss over layers %.5f, %.0f s, ETA %.0f s",
                        p.epoch, p.epochs, p.batch, p.batches, p.meanLoss, elapsed, eta))
        }
        lastPrint = now
    }

    func clear() {
        if tty && shown { FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8)); shown = false }
    }

    func finish() {
        if tty && shown { FileHandle.standardError.write(Data("\n".utf8)); shown = false }
    }
}
