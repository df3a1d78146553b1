import ArgumentParser
import Foundation
import Probe

/// `llamaprobe shards import`: activations extracted elsewhere (TransformerLens, HF on a GPU) into shards.
struct ShardsImport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Write a shard directory from an [N, layers, d_model] array and N integer labels.",
        discussion: """
        The activations are a .safetensors tensor (--key, default: resid_post or the only rank-3 float tensor) \
        or a .npy array (float32/float16, C order); the labels a .npy of int64/int32 (--labels) or an integer \
        tensor of the same safetensors file (--label-key). Rows are numbered 0..N-1; layers 0..layers-1. The \
        shards' model identity is "imported:<sha256 of the activations file>" and their readout is unknown \
        (predict on probes trained from them asks for --template and the other readout flags). Rerunning the same command \
        resumes; a different source on the same --out is refused.

        Example: llamaprobe shards import --activations acts.npy --labels labels.npy \
        --label-names very_happy,happy,slightly_positive,neutral,slightly_negative,sad,very_sad --out shards/
        """)

    @Option(help: ArgumentHelp("Activations [N, layers, d_model]: a .safetensors or .npy file, e.g. --activations acts.npy.", valueName: "file"))
    var activations: String

    @Option(help: ArgumentHelp("Tensor name in a .safetensors file, e.g. --key resid_post.", valueName: "name"))
    var key: String?

    @Option(help: ArgumentHelp("Labels [N] as a .npy of int64 or int32, e.g. --labels labels.npy.", valueName: "file"))
    var labels: String?

    @Option(name: .customLong("label-key"), help: ArgumentHelp("Labels as an I64/I32 tensor of the activations .safetensors, e.g. --label-key labels.", valueName: "name"))
    var labelKey: String?

    @Option(name: .customLong("label-names"), help: ArgumentHelp("Class names in id order (default: 0,1,…), e.g. --label-names happy,neutral,sad.", valueName: "a,b,…"))
    var labelNames: String?

    @Option(help: ArgumentHelp("Output shard directory, e.g. --out shards/.", valueName: "dir"))
    var out: String

    @Option(name: .customLong("rows-per-shard"), help: "Rows per shard file, e.g. --rows-per-shard 256.")
    var rowsPerShard = ImportOptions(activations: "", out: "").rowsPerShard

    @Option(help: ArgumentHelp("Shard storage type: f32, f16 or bf16 (default: the source's), e.g. --dtype f16.", valueName: "type"),
            transform: ActivationType.argument)
    var dtype: ActivationType?

    func validate() throws {
        if (labels == nil) == (labelKey == nil) { throw ValidationError("give exactly one of --labels FILE.npy and --label-key NAME") }
        if rowsPerShard < 1 { throw ValidationError("--rows-per-shard must be at least 1") }
    }

    func run() throws {
        var o = ImportOptions(activations: activations, out: out)
        o.key = key
        o.labelsPath = labels
        o.labelKey = labelKey
        o.labelNames = labelNames.map { $0.split(separator: ",").map { String($0) } }
        o.rowsPerShard = rowsPerShard
        o.dtype = dtype
        let t0 = Date()
        let r = try ShardImport.run(o, log: note)
        note(String(format: "imported %d rows (%d layers, d_model %d) into %d %@ shards in %@ (%.1f s)",
                    r.rows, r.layers, r.dModel, r.shards, r.dtype.rawValue, out, Date().timeIntervalSince(t0)))
    }
}
