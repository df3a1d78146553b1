import Foundation
import Quant
import Formats
import Model
import Probe
import Extraction

/// One entry per file reader: each takes the bytes of a file (as a hostile party would write it), puts them
/// where the reader expects them, runs the reader and everything a command does next with what it returned.
/// Errors are the expected outcome for bad input; a crash, trap, hang or out-of-bounds access is a finding.
/// The fuzzer (`make fuzz`, Fuzz/Driver) and the regression test (`Tests/FuzzTests`) call these.
public enum FuzzTargets {
    public struct Target: Sendable {
        public let name: String
        /// The file name the reader sees (its extension selects the format where that matters).
        public let fileName: String
        /// What the reader is given and what is done with its result.
        public let run: @Sendable (_ path: String, _ directory: String) throws -> Void
    }

    public static let all: [Target] = [
        Target(name: "safetensors", fileName: "model.safetensors") { path, _ in
            let f = try SafeTensorsFile(path: path)
            for name in f.names {
                let t = try f.info(name)
                if t.dtype.quantType != nil { _ = try f.floats(name) } else if t.dtype == .i64 || t.dtype == .i32 { _ = try f.integers(name) }
            }
        },
        Target(name: "safetensors-index", fileName: "model.safetensors.index.json") { path, _ in
            _ = try HFCheckpoint.readIndex(path)
        },
        Target(name: "config", fileName: "config.json") { path, _ in
            let c = try LlamaConfig.load(path: path)
            try c.validate(file: path)
            _ = HFCheckpoint.expectedTensors(c)
        },
        Target(name: "gguf", fileName: "model.gguf") { path, _ in
            let g = try GGUFFile(path: path)
            let c = try GGUFModel.config(g)
            let tok = try Tokenizer.fromGGUF(g)
            _ = try tok.encode("Hello <s> world\n  é 🙂")
            _ = try GGUFModel.loadWeights(g, config: c, includeHead: true, pool: pool)
        },
        Target(name: "tokenizer-model", fileName: "tokenizer.model") { path, _ in
            let tok = try Tokenizer(path: path)
            _ = try tok.encode("Hello <s> world\n  é 🙂")
        },
        Target(name: "tokenizer-json", fileName: "tokenizer.json") { path, _ in
            let tok = try Tokenizer(path: path)
            let ids = try tok.encode("Hello <|eot_id|> wor\u{301}ld\r\n  \t é 🙂 12345 <mask> I'M cat\u{3000}")
            _ = try tok.decode(ids + [-1, Int32.max])
            _ = ReadoutRecipe.fingerprint(of: tok)
        },
        Target(name: "dataset-csv", fileName: "data.csv") { path, _ in
            _ = try Dataset(path: path)
        },
        Target(name: "dataset-jsonl", fileName: "data.jsonl") { path, _ in
            _ = try Dataset(path: path)
        },
        Target(name: "shard", fileName: Shard.fileName(worker: 0, index: 0)) { path, _ in
            try readEveryHook(path)
        },
        // The decompressed content of a shard (the zstd checksum would stop most mutations of the file).
        Target(name: "shard-content", fileName: Shard.fileName(worker: 0, index: 0)) { path, _ in
            let content = try Files.read(path)
            try AtomicFileWriter.write(try Zstd.compress(content), to: path)
            try readEveryHook(path)
        },
        Target(name: "manifest", fileName: Manifest.fileName(worker: 0)) { path, directory in
            _ = try Manifest.read(path: path)
            _ = try ShardDirectory(path: directory)
            _ = try ShardVerification.run(directory: directory)
        },
        Target(name: "pth", fileName: "probe_at_layer_0.pth") { path, directory in
            _ = try TorchCheckpoint.read(path: path)
            _ = try ProbeSet.load(directory: directory)
        },
        Target(name: "probes", fileName: "probes.safetensors") { _, directory in
            _ = try ProbeSet.load(directory: directory)
        },
        Target(name: "npy", fileName: "acts.npy") { path, _ in
            let a = try NpyArray(path: path)
            if a.dtype == .i8 || a.dtype == .i4 { _ = try a.integers() }
        },
        Target(name: "split", fileName: "split.json") { path, _ in
            _ = try SplitFile.read(path: path)
        },
        // A checkpoint's chat template (chat_template.jinja, read as tokenizer_config.json's would be), parsed and
        // rendered with a multi-turn conversation as the readout does.
        Target(name: "chat-template", fileName: "chat_template.jinja") { _, directory in
            guard let source = try TokenizerConfig.read(directory: directory)?.chatTemplate else { return }
            let t = try ChatTemplate(name: "checkpoint", source: source)
            _ = try t.render([ChatMessage(role: "user", content: "Hi <s> é 🙂"),
                              ChatMessage(role: "assistant", content: "Hello!"), ChatMessage(role: "user", content: "How are you?\n")],
                             bosToken: "<s>", eosToken: "</s>", now: Date(timeIntervalSince1970: 0))
        },
    ]

    /// A shard read once per hook point its metadata lists (each read checks every hook's tensor).
    static func readEveryHook(_ path: String) throws {
        for h in try Shard.metadata(path: path).hooks { _ = try Shard.read(path: path, hook: h) }
    }

    public static func target(named name: String) -> Target? { all.first { $0.name == name } }

    nonisolated(unsafe) static let pool = ThreadPool(threads: 1)

    /// Runs `target` on `bytes` in a fresh directory under `scratch`; returns the error it threw, if any.
    @discardableResult
    public static func run(_ target: Target, bytes: UnsafeRawBufferPointer, scratch: String) -> Error? {
        let directory = scratch + "/\(target.name)"
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/" + target.fileName
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else { return FileError(path: path, reason: "cannot write") }
        do { try target.run(path, directory); return nil } catch { return error }
    }
}

extension AtomicFileWriter {
    /// Writes `bytes` to `path` atomically.
    static func write(_ bytes: [UInt8], to path: String) throws {
        let w = try AtomicFileWriter(path: path)
        try w.write(bytes)
        try w.commit()
    }
}
