import ArgumentParser
import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats

extension ExtractionConfig.OnError: ExpressibleByArgument {}

/// `--dtype f32|f16|bf16`: the library's one storage-type enum, spelled in lower case on the command line.
extension ActivationType {
    static func argument(_ s: String) throws -> ActivationType {
        guard let t = ActivationType(rawValue: s.uppercased()) else { throw ValidationError("'\(s)' is not f32, f16 or bf16") }
        return t
    }
}

/// `--worker I/N` or `auto`.
struct WorkerSpec: ExpressibleByArgument {
    var index: Int?
    var count: Int?
    init?(argument: String) {
        if argument == "auto" { return }
        let p = argument.split(separator: "/")
        guard p.count == 2, let i = Int(p[0]), let n = Int(p[1]), n >= 1, i >= 0, i < n else { return nil }
        index = i; count = n
    }
    init() {}

    var defaultValueDescription: String { index.map { "\($0)/\(count ?? 1)" } ?? "auto" }

    /// Resolves `auto` from Slurm (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) or a Kubernetes indexed Job
    /// (JOB_COMPLETION_INDEX, with --workers N).
    func resolve(workers: Int?) throws -> (Int, Int) {
        if let index, let count { return (index, count) }
        let env = ProcessInfo.processInfo.environment
        if let id = env["SLURM_ARRAY_TASK_ID"].flatMap(Int.init) {
            let min = env["SLURM_ARRAY_TASK_MIN"].flatMap(Int.init) ?? 0
            guard let n = workers ?? env["SLURM_ARRAY_TASK_COUNT"].flatMap(Int.init) else {
                throw CLIError("--worker auto: SLURM_ARRAY_TASK_COUNT is not set; pass --workers N")
            }
            return (id - min, n)
        }
        if let id = env["JOB_COMPLETION_INDEX"].flatMap(Int.init) {
            guard let n = workers else { throw CLIError("--worker auto with JOB_COMPLETION_INDEX needs --workers N (the Job's completions)") }
            return (id, n)
        }
        throw CLIError("--worker auto found neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX; pass --worker I/N")
    }
}

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Residual stream of every layer at the readout token, for every row of a labelled dataset, into zstd shards.",
        discussion: """
        Each row is wrapped in the template (default: LLaMA-2 chat plus the readout suffix), tokenized, run \
        through the model; resid_post of every layer at the last token goes to DIR/shard-WWWWW-SSSSS.safetensors.zst \
        (format: docs/shards.md) with a manifest per worker. --hooks stores other points of every block as well \
        (one tensor each), --position reads the mean over the message's or the suffix's tokens instead of the \
        last token, --layers keeps a subset; all three are recorded in the readout. Rerunning the same command resumes; a different \
        configuration on the same DIR is refused. The readout recipe (template, suffix, system prompt, \
        --max-tokens, embeddings, tokenizer) and the model's fingerprint (from its weights) are recorded in every \
        shard; train and predict take them from there. `--worker I/N` takes the rows with row % N == I, so N machines \
        can fill one directory; `llamaprobe shards verify DIR` checks the result. A rerun checks every shard the \
        manifest lists (size and sha256) and redoes missing or corrupt ones, saying so; one process per worker \
        and directory (a lock on DIR/.lock-WWWWW, released when the process ends; a second run names the holder).

        --steer-… adds interventions as in `generate` (A·v/‖v‖ at the output of block L); they are recorded in \
        the readout, so steered shards say so.

        Examples:
          llamaprobe extract --model llama-2-13b-chat.Q8_0.gguf --data emotions.csv --out shards/
          llamaprobe extract --model MODEL --data chats.jsonl --out shards/ --worker 2/8 --dtype f16
          llamaprobe extract --model MODEL --data emotions.csv --out shards/ --hooks resid_post,mlp_out --position mean --layers 10-20
        """)

    @OptionGroup var modelOptions: ModelOptions

    /// Every default below is read from the library's ExtractionConfig.
    static let defaults = ExtractionConfig(modelPath: "", dataPath: "", outDir: "")

    @Option(help: ArgumentHelp("Dataset: CSV (header row; RFC 4180; .tsv = tab-separated) or JSONL (message or messages, label: a string or an integer).", valueName: "file"))
    var data: String

    @Option(help: ArgumentHelp("CSV field separator: one character, or tab (default: tab for .tsv/.tab files, else a comma).", valueName: "char"))
    var delimiter: String?

    @Option(help: ArgumentHelp("Output shard directory.", valueName: "dir"))
    var out: String

    @Option(name: .customLong("text-column"), help: "CSV column (or JSONL key) holding the message.")
    var textColumn = Self.defaults.textColumn

    @Option(name: .customLong("label-column"), help: "CSV column (or JSONL key) holding the label.")
    var labelColumn = Self.defaults.labelColumn

    @Option(help: ArgumentHelp("Class order, comma-separated (ids = positions). Default: the recipe's seven emotional states when every label is among them, else the distinct labels sorted (integers numerically); printed and recorded.", valueName: "a,b,c"))
    var labels: String?

    @OptionGroup var templateOptions: TemplateOptions

    @Option(name: .customLong("max-tokens"), help: "Longer prompts lose tokens from the start of the content (after BOS); the readout suffix is kept.")
    var maxTokens = Self.defaults.maxTokens

    @Flag(name: .customLong("with-embeddings"), help: "Also store the embedding output: layers + 1 rows per example, HF hidden_states indexing (resid_post only).")
    var withEmbeddings = false

    @Option(help: ArgumentHelp("Block hook points to store, comma-separated, by TransformerLens name: resid_pre, attn_out, resid_mid, mlp_out, resid_post. One tensor per hook in every shard, read in one pass; `train --hook NAME` picks one.", valueName: "list"))
    var hooks = "resid_post"

    @Option(help: ArgumentHelp("Token(s) read: last (the last token), mean (the mean over the tokens of the message itself, the last user message's content: not the template's, not the suffix's) or suffix-mean (the mean over the readout suffix's tokens). A token belongs to a part when its last byte lies in that part of the rendered prompt (docs/shards.md).", valueName: "last|mean|suffix-mean"))
    var position = Self.defaults.position

    @Option(help: ArgumentHelp("Layers to store: all, or layer numbers and ranges, e.g. --layers 0,5,10-20 (with --with-embeddings 0 is the embedding output and block L is L + 1). Recorded; train names the probes by these numbers.", valueName: "all|list"))
    var layers = LayerSelection()

    @Option(help: ArgumentHelp("Storage type of the residuals: f32 (the reference precision), f16 or bf16 (default: f32).", valueName: "type"),
            transform: ActivationType.argument)
    var dtype: ActivationType = Self.defaults.dtype

    @OptionGroup var steer: SteerOptions

    @Option(name: .customLong("rows-per-shard"), help: "Rows per shard file.")
    var rowsPerShard = Self.defaults.rowsPerShard

    @Option(help: ArgumentHelp("This worker's share: I/N takes rows with row % N == I; auto reads SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX.", valueName: "I/N|auto"))
    var worker = WorkerSpec(argument: "0/1")!

    @Option(help: "Number of workers, for --worker auto under Kubernetes (or to override Slurm's count).")
    var workers: Int?

    @Option(name: .customLong("on-error"), help: "Bad rows (missing column, empty message, unknown label, invalid UTF-8 or JSON): fail or skip (recorded in the manifest with file line and reason).")
    var onError: ExtractionConfig.OnError = Self.defaults.onError

    func validate() throws {
        if rowsPerShard < 1 { throw ValidationError("--rows-per-shard must be at least 1") }
        if maxTokens < 8 { throw ValidationError("--max-tokens must be at least 8") }
        do { _ = try Hook.parseList(hooks) } catch { throw ValidationError(error.localizedDescription) }
        if !ReadoutRecipe.positions.contains(position) {
            throw ValidationError("--position must be one of \(ReadoutRecipe.positions.joined(separator: ", ")), not '\(position)'")
        }
        if let d = delimiter, Dataset.delimiter(named: d) == nil {
            throw ValidationError("--delimiter must be one character (not a quote or line break) or tab, not '\(d)'")
        }
    }

    func run() throws {
        let (wi, wn) = try worker.resolve(workers: workers)
        var cfg = ExtractionConfig(modelPath: modelOptions.model, dataPath: data, outDir: out)
        cfg.tokenizerPath = modelOptions.tokenizer
        cfg.textColumn = textColumn
        cfg.labelColumn = labelColumn
        cfg.delimiter = delimiter.flatMap(Dataset.delimiter(named:))
        cfg.labels = labels.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        cfg.renderer = templateOptions.renderer
        cfg.maxTokens = maxTokens
        cfg.withEmbeddings = withEmbeddings
        cfg.hooks = try Hook.parseList(hooks)
        cfg.position = position
        cfg.layers = layers.layers
        cfg.dtype = dtype
        cfg.rowsPerShard = rowsPerShard
        cfg.threads = modelOptions.threads
        cfg.worker = wi
        cfg.workers = wn
        cfg.onError = onError
        cfg.backend = modelOptions.backend
        cfg.kernel = modelOptions.kernel.resolved
        cfg.interventions = try steer.interventions(config: nil)
        let bar = ProgressBar(label: "extract")
        let s = try Extractor.run(cfg, log: note) { p in
            bar.update(done: p.rowsDone, total: p.rowsTotal,
                       detail: String(format: "%.1f tokens/s", p.tokensPerSecond), seconds: p.seconds)
        }
        bar.finish()
        note(String(format: "worker %d/%d: %d rows (%d already done), %d tokens in %.1f s = %.1f tokens/s; %d skipped, %d truncated; %.1f MB written, compression %.2fx -> %@",
                    wi, wn, s.rows, s.rowsAlreadyDone, s.tokens, s.seconds, s.tokensPerSecond, s.skipped, s.truncated,
                    Double(s.bytesWritten) / 1e6, s.compressionRatio, out))
        for (what, list) in [("skipped", s.skippedRows), ("truncated", s.truncatedRows)] where !list.isEmpty {
            note("\(what) (\(list.count); every one is listed in the manifest): " + list.prefix(5).joined(separator: "; ") + (list.count > 5 ? "; …" : ""))
        }
    }
}

struct Shards: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect and check shard directories.",
        subcommands: [ShardsVerify.self, ShardsInfo.self, ShardsImport.self, ShardsExport.self])
}

struct ShardsVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every checksum, that the workers' configurations agree, and that no row is missing or duplicated.",
        discussion: "Exit status 0 when complete, 1 otherwise.\n\nExample: llamaprobe shards verify shards/")

    @Argument(help: "Shard directory.")
    var directory: String

    func run() throws {
        let v = try ShardVerification.run(directory: directory)
        print("\(v.shards) shards, \(v.rows) rows (expected \(v.expectedRows)), \(v.skippedRows) skipped rows recorded")
        for p in v.problems { print("problem: \(p)") }
        if !v.isComplete { throw ExitCode.failure }
        print("complete")
    }
}

struct ShardsExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a shard directory as plain arrays (rows in input order, each stored hook point in float32).",
        discussion: """
        --format npy: OUT is a directory of resid_post.npy [rows, layers, d_model] (one HOOK.npy per hook point \
        stored with extract --hooks), label.npy, row.npy, n_tokens.npy and metadata.json. --format safetensors: OUT is one file with the same tensors and the \
        shard metadata. In Python without llamaprobe: python/llamaprobe_shards.py reads shard directories directly.

        Example: llamaprobe shards export shards/ --format npy --out arrays/
        """)

    @Argument(help: "Shard directory.")
    var directory: String
    @Option(help: "npy (a directory of .npy files) or safetensors (one file).")
    var format: ShardExport.Format = .npy
    @Option(help: ArgumentHelp("Output directory (npy) or file (safetensors).", valueName: "path"))
    var out: String

    func run() throws {
        let r = try ShardExport.run(directory: directory, format: format, out: out)
        print("wrote \(out): \(r.rows) rows × \(r.layers) layers × \(r.dModel) (float32)")
    }
}

extension ShardExport.Format: ExpressibleByArgument {}

struct ShardsInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Summarise a shard directory: workers, shards, rows, layout, labels, size.",
        discussion: "Example: llamaprobe shards info shards/")

    @Argument(help: "Shard directory.")
    var directory: String

    func run() throws {
        let dir = try ShardDirectory(path: directory)
        let m = dir.metadata, cfg = dir.manifests[0].config
        let bytes = dir.manifests.flatMap(\.shards).reduce(0.0) { $0 + Double($1.bytes) }
        let elem = m.dtype.size
        let raw = Double(dir.totalRows) * Double(m.hooks.count * m.layers.count * m.dModel * elem + 20)   // counts bounded by Manifest.validate
        print("model: \(m.model)\(m.quantization.map { " (\($0))" } ?? "")")
        print("data: \(cfg["data_file"] ?? "?") (\(cfg["rows_total"] ?? "?") rows), workers: \(dir.manifests[0].workers), manifests: \(dir.manifests.count), complete: \(dir.manifests.filter(\.complete).count)")
        print("shards: \(dir.shardPaths.count), rows: \(dir.totalRows), skipped: \(dir.manifests.flatMap(\.skipped).count), truncated: \(dir.manifests.flatMap(\.shards).flatMap(\.truncated).count)")
        print("layout: \(m.hooks.joined(separator: ", ")) [n, \(m.layers.count), \(m.dModel)] \(m.dtype.rawValue)\(m.withEmbeddings ? " (row 0 = embeddings, HF indexing)" : ""), layers \(m.layers.map(String.init).joined(separator: ","))")
        print("position: \(m.readout?.position ?? "last")")
        print("labels: \(m.labels.joined(separator: ", "))")
        print("template: \(m.template), suffix: \(jsonString(m.suffix)), system prompt: \(jsonString(m.systemPrompt))")
        print("readout: \(m.readoutDescription)")
        print(String(format: "size: %.1f MB on disk, %.1f MB raw, compression %.2fx", bytes / 1e6, raw / 1e6,
                     bytes > 0 ? raw / bytes : 0))
    }
}
