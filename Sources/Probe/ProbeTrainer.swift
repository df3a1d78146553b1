import Foundation
import Quant
import Formats

/// What ReduceLROnPlateau watches.
public enum PlateauMetric: String, Sendable, CaseIterable {
    case train, val
}

/// The hyperparameters of `llamaprobe train` (defaults: the reference recipe).
public struct TrainConfig: Sendable, Equatable {
    public var epochs = 50
    public var learningRate = 1e-3
    public var adam = AdamConfig()
    public var batchSize = 200
    public var valBatchSize = 400
    public var valEvery = 10
    public var valFraction = 0.2
    public var seed = 12345
    public var plateauFactor = 0.75
    public var plateauPatience = 0
    public var plateauOn = PlateauMetric.train
    /// Shuffle the training rows every epoch (false: batches follow the split's train order).
    public var shuffle = true
    public var threads = ThreadPool.defaultThreadCount
    /// Stop a layer's training after this many validations without a new best accuracy (nil: off, the reference).
    public var earlyStopping: Int?
    public init() {}

    /// Validation period: every epoch when the scheduler watches the validation loss.
    public var effectiveValEvery: Int { plateauOn == .val ? 1 : valEvery }

    public func validate() throws {
        func need(_ ok: Bool, _ what: String) throws { if !ok { throw TrainError(what) } }
        try need(epochs >= 1, "--epochs must be at least 1")
        try need(learningRate > 0 && learningRate.isFinite, "--lr must be positive")
        try need(adam.beta1 >= 0 && adam.beta1 < 1 && adam.beta2 >= 0 && adam.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
        try need(adam.weightDecay >= 0, "--weight-decay must be ≥ 0")
        try need(batchSize >= 1 && valBatchSize >= 1, "batch sizes must be at least 1")
        try need(valEvery >= 1, "--val-every must be at least 1")
        try need(valFraction > 0 && valFraction < 1, "--val-fraction must be in (0, 1)")
        try need(plateauFactor > 0 && plateauFactor < 1, "--plateau-factor must be in (0, 1)")
        try need(plateauPatience >= 0, "--plateau-patience must be ≥ 0")
        try need(seed >= 0 && seed <= Int(UInt32.max), "--seed must be in 0…4294967295 (numpy's RandomState range)")
        try need(threads >= 1, "--threads must be at least 1")
        try need(earlyStopping.map { $0 >= 1 } ?? true, "--early-stopping must be at least 1 (validations without improvement)")
    }
}

/// One row of probe_training_metrics.csv.
public struct EpochRecord: Sendable, Equatable {
    public var epoch: Int
    /// Mean of the per-batch mean losses (each batch's loss rounded to f32, as `loss.item()`).
    public var trainLoss: Double
    public var trainCorrect: Int
    public var trainTotal: Int
    public var trainAccuracy: Double { Double(trainCorrect) / Double(max(trainTotal, 1)) }
    public var valAccuracy: Double?
    public var valLoss: Double?
    public var bestAccuracy: Double
    public var isBest: Bool
    /// Learning rate after the scheduler step.
    public var lr: Double
}

/// One layer's training: its metrics, final and best weights.
public struct LayerOutcome: Sendable {
    /// The layer number (as stored in the shards' metadata).
    public var layer: Int
    public var epochs: [EpochRecord] = []
    public var finalWeight: [Float] = []
    public var finalBias: [Float] = []
    public var bestWeight: [Float]?
    public var bestBias: [Float]?
    public var bestEpoch: Int?
    public var bestAccuracy: Double = 0
    /// Share of the last epoch's training outputs that were exactly 0 or 1 in f32.
    public var saturatedShare: Double = 0
    /// The epoch after which --early-stopping stopped this layer (nil: it ran every epoch).
    public var stoppedEpoch: Int?
}

public struct TrainProgress: Sendable {
    public var epoch: Int
    public var epochs: Int
    public var batch: Int
    public var batches: Int
    /// Running mean (over layers) of this epoch's loss so far.
    public var meanLoss: Double
    public var phase: String
}

/// Trains one probe per layer on an ActivationSource: every batch updates all layers' probes (in
/// parallel over layers, each with its own Adam state and scheduler), so the data is read once per epoch.
/// The arithmetic of each layer is the per-layer recipe's; results do not depend on the thread count.
public final class ProbeTrainer {
    public let config: TrainConfig
    public let source: ActivationSource
    public let classes: Int
    /// Layer numbers of the probes, in the source's layer order.
    public let layers: [Int]
    let labels: [Int32]
    public let train: [Int]
    public let val: [Int]
    public let probes: [ProbeState]
    let pool: ThreadPool
    let scratch: [KernelScratch]

    /// `labels` by position; `train`/`val` are positions; `initial` one (weight [classes·dModel], bias) per layer.
    public init(config: TrainConfig, source: ActivationSource, labels: [Int32], classes: Int, layers: [Int],
                train: [Int], val: [Int], initial: [(weight: [Float], bias: [Float])], pool: ThreadPool? = nil) throws {
        try config.validate()
        guard layers.count == source.layerCount, initial.count == layers.count else {
            throw TrainError("internal: \(layers.count) layers, \(source.layerCount) in the data, \(initial.count) initial probes")
        }
        guard !train.isEmpty else { throw TrainError("the training set is empty") }
        self.config = config; self.source = source; self.classes = classes; self.layers = layers
        self.labels = labels; self.train = train; self.val = val
        let d = source.dModel
        probes = initial.map { ProbeState(weight: $0.weight, bias: $0.bias, classes: classes, dModel: d) }
        self.pool = pool ?? ThreadPool(threads: config.threads)
        scratch = (0..<self.pool.threadCount).map { _ in KernelScratch(dModel: d) }
    }

    /// N(0, 0.02) weights and zero bias for layer `layer`, from ProbeRNG(seed, stream: 1 + layer).
    public static func initialProbe(seed: Int, layer: Int, classes: Int, dModel: Int) -> (weight: [Float], bias: [Float]) {
        var rng = ProbeRNG(seed: UInt64(seed), stream: 1 + UInt64(layer))
        let w = (0..<(classes * dModel)).map { _ in Float(0.02 * rng.normal()) }
        return (w, [Float](repeating: 0, count: classes))
    }

    /// One epoch's per-layer sums. Each layer's slots are written by the one thread that runs that layer in a
    /// batch (plain memory, no shared array buffer); a divergence message may come from any thread (locked).
    fileprivate final class Accumulator: @unchecked Sendable {
        let lossOfBatchMeans: UnsafeMutableBufferPointer<Double>
        let correct: UnsafeMutableBufferPointer<Int>
        let saturated: UnsafeMutableBufferPointer<Int>
        var total = 0
        var batches = 0
        private let lock = NSLock()
        private var firstFailure: String?
        init(_ n: Int) {
            lossOfBatchMeans = .allocate(capacity: n); lossOfBatchMeans.initialize(repeating: 0)
            correct = .allocate(capacity: n); correct.initialize(repeating: 0)
            saturated = .allocate(capacity: n); saturated.initialize(repeating: 0)
        }
        deinit { lossOfBatchMeans.deallocate(); correct.deallocate(); saturated.deallocate() }
        func fail(_ message: String) { lock.lock(); if firstFailure == nil { firstFailure = message }; lock.unlock() }
        var failure: String? { lock.lock(); defer { lock.unlock() }; return firstFailure }
    }

    /// A run's training state between batches: `run` drives one; `runShared` drives several from one pass.
    public final class Session {
        var outcomes: [LayerOutcome]
        var lrs: [Double]
        var schedulers: [PlateauScheduler]
        /// --early-stopping: validations since the last new best, and the layers still training.
        var sinceBest: [Int]
        var active: [Bool]
        fileprivate var acc: Accumulator
        var epoch = 0
        var lrsNow: [Double] = []
        var activeNow: [Bool] = []
        var finished: Bool { !active.contains(true) }
        fileprivate init(_ t: ProbeTrainer) {
            let n = t.layers.count
            outcomes = t.layers.map { LayerOutcome(layer: $0) }
            lrs = [Double](repeating: t.config.learningRate, count: n)
            schedulers = [PlateauScheduler](repeating: PlateauScheduler(factor: t.config.plateauFactor, patience: t.config.plateauPatience), count: n)
            sinceBest = [Int](repeating: 0, count: n)
            active = [Bool](repeating: true, count: n)
            acc = Accumulator(n)
        }
    }

    public func makeSession() -> Session { Session(self) }

    func beginEpoch(_ s: Session, _ epoch: Int) {
        s.epoch = epoch
        s.acc = Accumulator(layers.count)
        s.lrsNow = s.lrs
        s.activeNow = s.active
    }

    /// One training batch of the current epoch: a forward/backward pass and an Adam step of every active layer.
    func trainBatch(_ s: Session, _ batch: BatchView, progress: ((TrainProgress) -> Void)?) throws {
        let n = layers.count
        let acc = s.acc, lrsNow = s.lrsNow, activeNow = s.activeNow, epoch = s.epoch
        let layerBytes = source.dModel * source.type.size
        let type = source.type
        batch.rows.withUnsafeBufferPointer { rows in
            batch.labels.withUnsafeBufferPointer { lab in
                pool.parallelFor(n) { li, thread in
                    guard activeNow[li] else { return }
                    let p = probes[li]
                    let out = ProbeKernels.forwardBackward(p, rows: rows.baseAddress!, labels: lab.baseAddress!, count: batch.count,
                                                           layerOffset: li * layerBytes, type: type, scratch: scratch[thread])
                    let loss = Float(out.lossSum / Double(batch.count * classes))
                    if !loss.isFinite { acc.fail("layer \(layers[li]): the loss is \(loss) at epoch \(epoch) (diverged; lower --lr)") }
                    p.adamStep(lr: lrsNow[li], config.adam)
                    acc.lossOfBatchMeans[li] += Double(loss)
                    acc.correct[li] += out.correct
                    acc.saturated[li] += out.saturated
                }
            }
        }
        if let f = acc.failure { throw TrainError(f) }
        acc.total += batch.count
        acc.batches += 1
        progress?(TrainProgress(epoch: epoch, epochs: config.epochs, batch: acc.batches, batches: (train.count + config.batchSize - 1) / config.batchSize,
                                meanLoss: acc.lossOfBatchMeans.reduce(0, +) / Double(max(1, activeNow.filter { $0 }.count) * acc.batches), phase: "train"))
    }

    /// Whether the epoch ends with a validation.
    func validates(_ epoch: Int) -> Bool { epoch % config.effectiveValEvery == 0 && !val.isEmpty }

    /// The end of an epoch: best checkpoints, scheduler steps, metrics, early stopping.
    func endEpoch(_ s: Session, val v: (accuracy: [Double], loss: [Double])?) {
        let acc = s.acc, epoch = s.epoch
        let valAcc = v?.accuracy, valLoss = v?.loss
        for li in 0..<layers.count where s.activeNow[li] {
            let trainLoss = acc.lossOfBatchMeans[li] / Double(max(1, acc.batches))
            var isBest = false
            if let va = valAcc?[li], va > s.outcomes[li].bestAccuracy {
                s.outcomes[li].bestAccuracy = va
                s.outcomes[li].bestEpoch = epoch
                s.outcomes[li].bestWeight = probes[li].weight.array
                s.outcomes[li].bestBias = probes[li].bias.array
                isBest = true
            }
            let metric = config.plateauOn == .val ? (valLoss?[li] ?? trainLoss) : trainLoss
            s.lrs[li] = s.schedulers[li].step(metric, lr: s.lrs[li])
            s.outcomes[li].epochs.append(EpochRecord(epoch: epoch, trainLoss: trainLoss, trainCorrect: acc.correct[li], trainTotal: acc.total,
                                                     valAccuracy: valAcc?[li], valLoss: valLoss?[li],
                                                     bestAccuracy: s.outcomes[li].bestAccuracy, isBest: isBest, lr: s.lrs[li]))
            if epoch == config.epochs || config.earlyStopping != nil {
                s.outcomes[li].saturatedShare = Double(acc.saturated[li]) / Double(max(1, acc.total * classes))
            }
            if let patience = config.earlyStopping, valAcc != nil {
                s.sinceBest[li] = isBest ? 0 : s.sinceBest[li] + 1
                if s.sinceBest[li] >= patience && epoch < config.epochs {
                    s.active[li] = false
                    s.outcomes[li].stoppedEpoch = epoch
                }
            }
        }
    }

    func finish(_ s: Session) -> [LayerOutcome] {
        for li in 0..<layers.count {
            s.outcomes[li].finalWeight = probes[li].weight.array
            s.outcomes[li].finalBias = probes[li].bias.array
        }
        return s.outcomes
    }

    public func run(progress: ((TrainProgress) -> Void)? = nil) throws -> [LayerOutcome] {
        let s = makeSession()
        var shuffler: ProbeRNG? = config.shuffle ? ProbeRNG(seed: UInt64(config.seed), stream: 0) : nil
        for epoch in 1...config.epochs {
            if s.finished { break }
            beginEpoch(s, epoch)
            try source.forEachBatch(positions: train, batchSize: config.batchSize, shuffle: &shuffler) { batch in
                try trainBatch(s, batch, progress: progress)
            }
            endEpoch(s, val: validates(epoch) ? try evaluate(positions: val) : nil)
        }
        return finish(s)
    }

    /// Several runs (trainers on the same source, the same epochs and validation period) in one pass over the data per
    /// epoch, for streamed data: the batches are drawn from the union of the runs' training rows with one shuffle
    /// (ProbeRNG stream 0 of `seed`), and each run trains on its own rows of every batch (a run whose rows are the union
    /// gets exactly the batches it would alone); validation is one ordered pass over the union of the validation rows,
    /// each run scoring its own rows (accuracy as alone; the validation loss is the mean over these shared batches).
    public static func runShared(_ trainers: [ProbeTrainer], seed: Int, shuffle: Bool,
                                 progress: ((TrainProgress) -> Void)? = nil) throws -> [[LayerOutcome]] {
        guard let first = trainers.first else { return [] }
        let count = first.labels.count
        func member(_ p: [Int]) -> [Bool] { var m = [Bool](repeating: false, count: count); for i in p { m[i] = true }; return m }
        let inTrain = trainers.map { member($0.train) }, inVal = trainers.map { member($0.val) }
        let union = (0..<count).filter { p in inTrain.contains { $0[p] } }
        let valUnion = (0..<count).filter { p in inVal.contains { $0[p] } }
        func part(_ b: BatchView, _ m: [Bool]) -> BatchView {
            let keep = b.positions.indices.filter { m[b.positions[$0]] }
            if keep.count == b.count { return b }
            return BatchView(rows: keep.map { b.rows[$0] }, labels: keep.map { b.labels[$0] }, positions: keep.map { b.positions[$0] })
        }
        let sessions = trainers.map { $0.makeSession() }
        var shuffler: ProbeRNG? = shuffle ? ProbeRNG(seed: UInt64(seed), stream: 0) : nil
        for epoch in 1...first.config.epochs {
            let live = trainers.indices.filter { !sessions[$0].finished }
            if live.isEmpty { break }
            for r in live { trainers[r].beginEpoch(sessions[r], epoch) }
            try first.source.forEachBatch(positions: union, batchSize: first.config.batchSize, shuffle: &shuffler) { batch in
                for r in live {
                    let b = part(batch, inTrain[r])
                    if b.count > 0 { try trainers[r].trainBatch(sessions[r], b, progress: r == 0 ? progress : nil) }
                }
            }
            var results = [(accuracy: [Double], loss: [Double])?](repeating: nil, count: trainers.count)
            let validating = live.filter { trainers[$0].validates(epoch) }
            if !validating.isEmpty {
                var sums = trainers.map { EvalSums($0.layers.count) }
                var none: ProbeRNG? = nil
                try first.source.forEachBatch(positions: valUnion, batchSize: first.config.valBatchSize, shuffle: &none) { batch in
                    for r in validating {
                        let b = part(batch, inVal[r])
                        if b.count > 0 { trainers[r].evaluateBatch(b, into: &sums[r]) }
                    }
                }
                for r in validating { results[r] = sums[r].result }
            }
            for r in live { trainers[r].endEpoch(sessions[r], val: results[r]) }
        }
        return trainers.indices.map { trainers[$0].finish(sessions[$0]) }
    }

    /// Correct predictions and per-batch mean losses of every layer, summed over evaluation batches.
    struct EvalSums {
        var correct: [Int]
        var loss: [Double]
        var batches = 0, total = 0
        init(_ n: Int) { correct = [Int](repeating: 0, count: n); loss = [Double](repeating: 0, count: n) }
        var result: (accuracy: [Double], loss: [Double]) {
            (correct.map { Double($0) / Double(max(total, 1)) }, loss.map { $0 / Double(max(batches, 1)) })
        }
    }

    /// One evaluation batch of every layer's current probe.
    func evaluateBatch(_ batch: BatchView, into sums: inout EvalSums) {
        let n = layers.count
        let layerBytes = source.dModel * source.type.size
        sums.correct.withUnsafeMutableBufferPointer { cp in
            sums.loss.withUnsafeMutableBufferPointer { lp in
                let (cp, lp) = (cp, lp)
                batch.rows.withUnsafeBufferPointer { rows in
                    batch.labels.withUnsafeBufferPointer { lab in
                        pool.parallelFor(n) { li, thread in
                            let out = ProbeKernels.evaluate(probes[li], rows: rows.baseAddress!, labels: lab.baseAddress!, count: batch.count,
                                                            layerOffset: li * layerBytes, type: source.type, scratch: scratch[thread])
                            cp[li] += out.correct
                            lp[li] += Double(Float(out.lossSum / Double(batch.count * classes)))
                        }
                    }
                }
            }
        }
        sums.batches += 1
        sums.total += batch.count
    }

    /// Accuracy and loss (mean of per-batch means, batches of valBatchSize) of every layer's current probe.
    public func evaluate(positions: [Int]) throws -> (accuracy: [Double], loss: [Double]) {
        var sums = EvalSums(layers.count)
        var none: ProbeRNG? = nil
        try source.forEachBatch(positions: positions, batchSize: config.valBatchSize, shuffle: &none) { batch in
            evaluateBatch(batch, into: &sums)
        }
        return sums.result
    }

    /// The sigmoid outputs [positions.count, classes] of layer index `li` with the given weights, and the
    /// labels in the same order (for the report).
    public func outputs(layerIndex li: Int, weight: [Float], bias: [Float], positions: [Int]) throws -> (outputs: [Float], labels: [Int32]) {
        let probe = ProbeState(weight: weight, bias: bias, classes: classes, dModel: source.dModel)
        var result = [Float]()
        var labs = [Int32]()
        var none: ProbeRNG? = nil
        try source.forEachBatch(positions: positions, batchSize: config.valBatchSize, shuffle: &none) { batch in
            var out = [Float](repeating: 0, count: batch.count * classes)
            batch.rows.withUnsafeBufferPointer { rows in
                batch.labels.withUnsafeBufferPointer { lab in
                    out.withUnsafeMutableBufferPointer { o in
                        _ = ProbeKernels.evaluate(probe, rows: rows.baseAddress!, labels: lab.baseAddress!, count: batch.count,
                                                  layerOffset: li * source.dModel * source.type.size, type: source.type,
                                                  scratch: scratch[0], outputs: o.baseAddress!)
                    }
                }
            }
            result += out
            labs += batch.labels
        }
        return (result, labs)
    }
}
