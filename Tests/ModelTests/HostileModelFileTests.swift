import Foundation
import Model
import Quant
import Formats
import Testing

/// Issue 9, the model side: crafted config.json, GGUF, safetensors index and tokenizer.model files get one
/// clear error naming the file, the key or tensor and what is wrong — never a trap, a hang or a huge allocation.
/// Each test builds its damaged file here and asserts the error text.
@Suite struct HostileModelFileTests {
    static let gguf = Fixtures.root.appendingPathComponent("gguf")

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return error.localizedDescription }
        return "no error"
    }

    /// A copy of a fixture checkpoint directory that a test may damage.
    func copyModel(_ name: String = "gqa-bf16", _ function: String = #function) throws -> String {
        let dir = temporaryDirectory(function) + "/model"
        try FileManager.default.copyItem(atPath: Fixtures.model(name), toPath: dir)
        return dir
    }

    /// Rewrites `dir/config.json` through `edit` (a JSON object).
    func editConfig(_ dir: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = dir + "/config.json"
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: path))
    }

    /// A config.json alone (for errors LlamaConfig.load must give), from the mha-f32 fixture through `edit`.
    func configFile(_ edit: (inout [String: Any]) -> Void, _ function: String = #function) throws -> String {
        let dir = temporaryDirectory(function)
        try FileManager.default.copyItem(atPath: Fixtures.model("mha-f32") + "/config.json", toPath: dir + "/config.json")
        try editConfig(dir, edit)
        return dir + "/config.json"
    }

    /// A copy of a fixture GGUF with its metadata edited (the tensors are copied as they are).
    func editGGUF(_ name: String = "mha-f32-f32.gguf", _ function: String = #function,
                  _ edit: (inout [(String, GGUFValue)]) -> Void) throws -> String {
        let g = try GGUFFile(path: Self.gguf.appendingPathComponent(name).path)
        var meta = g.metadataKeys.map { ($0, g.metadata[$0]!) }
        edit(&meta)
        let out = temporaryDirectory(function) + "/edited.gguf"
        let infos = g.tensorNames.map { g.tensors[$0]! }
        let w = try GGUFWriter(path: out, metadata: meta, tensors: infos.map { GGUFWriter.Spec($0.name, $0.type, $0.shape) })
        for t in infos { try w.write(g.bytes(t)) }
        try w.commit()
        return out
    }

    func set(_ meta: inout [(String, GGUFValue)], _ key: String, _ value: GGUFValue?) {
        meta.removeAll { $0.0 == key }
        if let value { meta.append((key, value)) }
    }

    // MARK: Row 1: counts validated against what the checkpoint holds; sane bounds on every config number

    @Test("num_hidden_layers 10^12 / block_count 2^40 are refused before any tensor list is built")
    func hugeLayerCounts() throws {
        // config.json alone: bounded.
        let path = try configFile { $0["num_hidden_layers"] = 1_000_000_000_000 }
        let m = message { _ = try LlamaConfig.load(path: path) }
        #expect(m == "\(path): 'num_hidden_layers': 1000000000000 is absurd: at most 65536 is accepted", "\(m)")
        // A checkpoint with a plausible count above what its files hold.
        let dir = try copyModel()
        try editConfig(dir) { $0["num_hidden_layers"] = 40 }
        let m2 = message { _ = try HFCheckpoint(directory: dir) }
        #expect(m2 == "\(dir)/config.json: 'num_hidden_layers': is 40 but the checkpoint holds tensors of only 3 layers (model.layers.N.*)", "\(m2)")
        // GGUF.
        let g = try editGGUF { set(&$0, "llama.block_count", .uint64(1 << 40)) }
        let m3 = message { _ = try LoadedModel.load(path: g, threads: 1) }
        #expect(m3 == "\(g): key 'llama.block_count': is 1099511627776 but the file holds tensors of only 3 layers (blk.N.*)", "\(m3)")
    }

    @Test("every size in config.json has a bound; eps and theta must be positive float32 values")
    func configBounds() throws {
        let cases: [(String, Any, String)] = [
            ("hidden_size", 1 << 40, "'hidden_size': 1099511627776 is absurd: at most 1048576 is accepted"),
            ("intermediate_size", -5, "'intermediate_size': must be positive, got -5"),
            ("vocab_size", 1 << 30, "'vocab_size': 1073741824 is absurd"),
            ("head_dim", 1 << 20, "'head_dim': 1048576 is absurd"),
            ("num_key_value_heads", 8, "'num_key_value_heads': 4 attention heads are not a multiple of 8 key/value heads"),
            ("max_position_embeddings", (1 << 32) + 1, "'max_position_embeddings': 4294967297 is absurd: at most 4294967295"),
            ("rms_norm_eps", 1e-46, "'rms_norm_eps': 1e-46 cannot be represented as a float32 (it becomes 0.0)"),
            ("rms_norm_eps", 0, "'rms_norm_eps': must be a positive number, got 0.0"),
            ("rope_theta", 1e300, "'rope_theta': 1e+300 cannot be represented as a float32 (it becomes inf)"),
        ]
        for (key, value, expected) in cases {
            let path = try configFile { $0[key] = value }
            let m = message { _ = try LlamaConfig.load(path: path) }
            #expect(m.hasPrefix(path + ": " + expected), "\(key) = \(value): \(m)")
        }
    }

    @Test("every size key with 0, -1, 2^62 and Int.max (config.json) or 0, 2^62, 2^64-1 (GGUF): an error naming that key")
    func sizeSweep() throws {
        for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "vocab_size", "max_position_embeddings"] {
            for value in [0, -1, 1 << 62, Int.max] {
                let path = try configFile { $0[key] = value }
                do {
                    _ = try LlamaConfig.load(path: path)
                    Issue.record("\(key) = \(value) accepted")
                } catch let e as ConfigError {
                    #expect(e.key == key, "\(key) = \(value): \(e.localizedDescription)")
                }
            }
        }
        for key in ["llama.embedding_length", "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count",
                    "llama.attention.head_count_kv", "llama.attention.key_length", "llama.context_length"] {
            for value in [UInt64(0), 1 << 62, .max] {
                let g = try editGGUF { set(&$0, key, .uint64(value)) }
                do {
                    _ = try LoadedModel.load(path: g, threads: 1)
                    Issue.record("\(key) = \(value) accepted")
                } catch let e as GGUFError {
                    // key_length 0 is a head dimension of 0: named by the key it comes from.
                    #expect(e.key == key, "\(key) = \(value): \(e.localizedDescription)")
                }
            }
        }
    }

    // MARK: Row 2: zero heads is the "must be positive" error, not SIGFPE

    @Test("num_attention_heads 0 / llama.attention.head_count 0 give 'must be positive'")
    func zeroHeads() throws {
        let path = try configFile { $0["num_attention_heads"] = 0; $0["head_dim"] = nil }
        #expect(message { _ = try LlamaConfig.load(path: path) } == "\(path): 'num_attention_heads': must be positive, got 0")
        let path2 = try configFile { $0["num_attention_heads"] = 0; $0["head_dim"] = 16 }
        #expect(message { _ = try LlamaConfig.load(path: path2) } == "\(path2): 'num_attention_heads': must be positive, got 0")
        // GGUF: named with its GGUF key, not blamed on llama.rope.dimension_count.
        let g = try editGGUF { set(&$0, "llama.attention.head_count", .uint32(0)) }
        #expect(message { _ = try LoadedModel.load(path: g, threads: 1) } == "\(g): key 'llama.attention.head_count': must be positive, got 0")
    }

    // MARK: Row 3: GGUF byte sizes checked

    @Test("a GGUF tensor with ne[0] = 2^62 is refused naming the tensor (the byte size would wrap)")
    func ggufHugeRow() throws {
        var r = [UInt8]()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { r += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { r += $0 } }
        r += Array("GGUF".utf8); u32(3); u64(1); u64(0)
        u64(4); r += Array("huge".utf8); u32(1); u64(1 << 62); u32(0 /* F32 */); u64(0)
        r += [UInt8](repeating: 0, count: 64 - r.count % 32)
        let path = temporaryDirectory() + "/huge.gguf"
        try Data(r).write(to: URL(fileURLWithPath: path))
        let m = message { _ = try GGUFFile(path: path) }
        #expect(m == "\(path): tensor 'huge': F32 dims [4611686018427387904]: the byte size overflows (more than 9223372036854775807 bytes)", "\(m)")
    }

    @Test("a safetensors shape whose byte size overflows says so (not 'needs 0 bytes')")
    func safetensorsHugeShape() throws {
        let header = #"{"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}"#
        var bytes = [UInt8]()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        let path = temporaryDirectory() + "/huge.safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let m = message { _ = try SafeTensorsFile(path: path) }
        #expect(m == "\(path): tensor 't': F32 [4611686018427387904] needs more than 9223372036854775807 bytes (the size overflows)", "\(m)")
    }

    // MARK: Row 4: rope scaling

    @Test("linear rope scaling: GGUF factor without a type, the old scale_linear key and HF's linear rope_scaling agree")
    func linearRopeScaling() throws {
        let hfDir = try copyModel("mha-f32")
        try editConfig(hfDir) { $0["rope_scaling"] = ["rope_type": "linear", "factor": 2.0] }
        let hf = try LoadedModel.load(path: hfDir, threads: 2)
        #expect(hf.config.linearRopeFactor == 2)
        let factorOnly = try editGGUF { set(&$0, "llama.rope.scaling.factor", .float32(2)) }
        let oldKey = try editGGUF { set(&$0, "llama.rope.scale_linear", .float32(2)) }
        let none = try editGGUF { set(&$0, "llama.rope.scaling.factor", .float32(2)); set(&$0, "llama.rope.scaling.type", .string("none")) }
        let c = Fixtures.cases.first { $0.name == "chat_system" }!
        let reference = try hf.model.capture(c.ids, CaptureOptions()).residPost
        let unscaled = try Fixtures.loadedModel("mha-f32").model.capture(c.ids, CaptureOptions()).residPost
        #expect(relativeError(unscaled, reference) > 1e-3, "scaling by 2 must change the residuals")
        for path in [factorOnly, oldKey] {
            let g = try LoadedModel.load(path: path, threads: 2)
            #expect(g.config.linearRopeFactor == 2, "\(path)")
            let e = relativeError(try g.model.capture(c.ids, CaptureOptions()).residPost, reference)
            #expect(e <= 1e-4, "\(path): rel error \(e) against HF's linear scaling")
        }
        let n = try LoadedModel.load(path: none, threads: 2)
        #expect(n.config.linearRopeFactor == nil)
        #expect(relativeError(try n.model.capture(c.ids, CaptureOptions()).residPost, unscaled) <= 1e-4)
        // quantize keeps the scaling.
        let out = temporaryDirectory() + "/scaled.gguf"
        try Quantizer.run(checkpoint: try HFCheckpoint(directory: hfDir), tokenizer: hf.tokenizer.serialized,
                          tokenizerSource: "t", outPath: out, type: .f16, pool: ThreadPool(threads: 2))
        let q = try GGUFFile(path: out)
        #expect(q.metadata["llama.rope.scaling.type"] == .string("linear") && q.metadata["llama.rope.scaling.factor"] == .float32(2))
    }

    @Test("other rope scaling types are refused by name")
    func otherRopeScalingRefused() throws {
        let g = try editGGUF { set(&$0, "llama.rope.scaling.type", .string("yarn")); set(&$0, "llama.rope.scaling.factor", .float32(4)) }
        #expect(message { _ = try LoadedModel.load(path: g, threads: 1) }
                == "\(g): key 'llama.rope.scaling.type': rope scaling type 'yarn' is not supported (only 'linear' and 'none')")
        let bad = try editGGUF { set(&$0, "llama.rope.scaling.factor", .float32(-2)) }
        #expect(message { _ = try LoadedModel.load(path: bad, threads: 1) }
                == "\(bad): key 'llama.rope.scaling.factor': linear rope scaling factor must be a positive number, got -2.0")
        let path = try configFile { $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048] }
        #expect(message { _ = try LlamaConfig.load(path: path) }
                == "\(path): 'rope_scaling': rope scaling type 'yarn' is not supported (only 'linear', 'llama3' and 'default')")
    }

    // MARK: Row 5: quantize never writes a file it cannot read

    /// A serialized tokenizer.model whose trainer_spec records bos_id = `bos` (a second trainer_spec message
    /// appended: protobuf merges it, so the later bos_id wins). SentencePiece finds BOS through its piece.
    func staleTokenizer(bos: Int64, from path: String) throws -> Data {
        var d = try Data(contentsOf: URL(fileURLWithPath: path))
        var v = UInt64(bitPattern: bos)
        var field: [UInt8] = [0xC8, 0x02]   // field 41 (bos_id), varint
        while v >= 0x80 { field.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        field.append(UInt8(v))
        d += [0x12, UInt8(field.count)] + field   // field 2 (trainer_spec), length-delimited
        return d
    }

    @Test("quantize takes the special ids from the pieces SentencePiece uses, not stale trainer_spec ids")
    func quantizeStaleTokenizerIDs() throws {
        let model = Fixtures.model("gqa-bf16")
        for bos in [Int64(300), 5000, -1] {
            let data = try staleTokenizer(bos: bos, from: model + "/tokenizer.model")
            #expect(try SentencePieceModel.parse(data, source: "t").bosID == Int(bos))
            let tok = try Tokenizer(serialized: data, source: "t")
            #expect(tok.bosID == 1)
            let out = temporaryDirectory() + "/stale.gguf"
            try Quantizer.run(checkpoint: try HFCheckpoint(directory: model), tokenizer: data, tokenizerSource: "t",
                              outPath: out, type: .q8_0, pool: ThreadPool(threads: 2))
            let m = try LoadedModel.load(path: out, threads: 1)
            #expect(m.tokenizer.bosID == 1 && m.tokenizer.eosID == tok.eosID, "bos_id \(bos)")
        }
    }

    @Test("quantize refuses values GGUF cannot hold and leaves no file")
    func quantizeUnrepresentable() throws {
        for (key, value, expected) in [
            ("rms_norm_eps", 1e-46 as Any, "'rms_norm_eps': 1e-46 cannot be represented as a float32"),
            ("max_position_embeddings", (1 << 32) + 1 as Any, "'max_position_embeddings': 4294967297 is absurd"),
        ] {
            let dir = try copyModel()
            try editConfig(dir) { $0[key] = value }
            let outDir = temporaryDirectory()
            let m = message {
                try Quantizer.run(checkpoint: try HFCheckpoint(directory: dir), tokenizer: Data(contentsOf: URL(fileURLWithPath: dir + "/tokenizer.model")),
                                  tokenizerSource: "t", outPath: outDir + "/out.gguf", type: .q8_0, pool: ThreadPool(threads: 2))
            }
            #expect(m.hasPrefix("\(dir)/config.json: \(expected)"), "\(m)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: outDir).isEmpty)
        }
    }

    @Test("quantize removes the temporary files of a killed run (a dead process's .OUT.tmp-PID) and leaves none of its own")
    func quantizeCleansLeftovers() throws {
        // A process id that is certainly dead: a child that has exited and been reaped.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        let dead = p.processIdentifier
        let dir = temporaryDirectory()
        let out = dir + "/model.gguf"
        FileManager.default.createFile(atPath: dir + "/.model.gguf.tmp-\(dead)", contents: Data(repeating: 7, count: 4096))
        try FileManager.default.createDirectory(atPath: dir + "/.model.gguf.tmp-\(dead).d", withIntermediateDirectories: false)
        FileManager.default.createFile(atPath: dir + "/.model.gguf.tmp-\(dead).d/model.gguf", contents: Data([1, 2, 3]))
        // A live process's temporary file is not touched.
        let live = dir + "/.model.gguf.tmp-1"
        FileManager.default.createFile(atPath: live, contents: Data([1]))
        let model = Fixtures.model("gqa-bf16")
        try Quantizer.run(checkpoint: try HFCheckpoint(directory: model), tokenizer: Data(contentsOf: URL(fileURLWithPath: model + "/tokenizer.model")),
                          tokenizerSource: "t", outPath: out, type: .q8_0, pool: ThreadPool(threads: 2))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == [".model.gguf.tmp-1", "model.gguf"])
        _ = try GGUFFile(path: out)
    }

    // MARK: Row 6: messages

    @Test("a non-integer size names the key and says it must be an integer")
    func nonIntegerSize() throws {
        let path = try configFile { $0["hidden_size"] = 128.5 }
        #expect(message { _ = try LlamaConfig.load(path: path) } == "\(path): 'hidden_size': must be an integer, got 128.5")
        let path2 = try configFile { $0["num_hidden_layers"] = "two" }
        #expect(message { _ = try LlamaConfig.load(path: path2) } == "\(path2): 'num_hidden_layers': must be an integer, got \"two\"")
        let path3 = try configFile { $0["vocab_size"] = 1e30 }
        #expect(message { _ = try LlamaConfig.load(path: path3) }.hasPrefix("\(path3): 'vocab_size': must be an integer, got 1"))
    }

    @Test("GGUF config errors name GGUF keys")
    func ggufKeyNames() throws {
        let g = try editGGUF { set(&$0, "llama.attention.head_count_kv", .uint32(3)) }
        #expect(message { _ = try LoadedModel.load(path: g, threads: 1) }
                == "\(g): key 'llama.attention.head_count_kv': 4 attention heads are not a multiple of 3 key/value heads")
        let g2 = try editGGUF { set(&$0, "llama.attention.layer_norm_rms_epsilon", .float64(1e-50)) }
        #expect(message { _ = try LoadedModel.load(path: g2, threads: 1) }
                == "\(g2): key 'llama.attention.layer_norm_rms_epsilon': 1e-50 cannot be represented as a float32 (it becomes 0.0)")
        let g4 = try editGGUF { set(&$0, "llama.embedding_length", .uint32(0)) }
        #expect(message { _ = try LoadedModel.load(path: g4, threads: 1) } == "\(g4): key 'llama.embedding_length': must be positive, got 0")
        let g3 = try editGGUF { set(&$0, "llama.context_length", .uint32(0)) }
        #expect(message { _ = try LoadedModel.load(path: g3, threads: 1) } == "\(g3): key 'llama.context_length': must be positive, got 0")
    }

    @Test("a directory or a symbolic link loop where a file is expected, and a mistyped model path, are named as such")
    func notRegularFiles() throws {
        let dir = try copyModel()
        try FileManager.default.removeItem(atPath: dir + "/config.json")
        try FileManager.default.createDirectory(atPath: dir + "/config.json", withIntermediateDirectories: false)
        #expect(message { _ = try HFCheckpoint(directory: dir) } == "\(dir)/config.json: is a directory, not a regular file")

        let dir2 = try copyModel()
        try FileManager.default.removeItem(atPath: dir2 + "/tokenizer.model")
        try FileManager.default.createSymbolicLink(atPath: dir2 + "/tokenizer.model", withDestinationPath: dir2 + "/tokenizer.model")
        #expect(message { _ = try LoadedModel.tokenizer(forModel: dir2) } == "\(dir2)/tokenizer.model: is a symbolic link loop")
        #expect(message { _ = try LoadedModel.load(path: dir2, threads: 1) } == "\(dir2)/tokenizer.model: is a symbolic link loop")

        let dir3 = try copyModel()
        try FileManager.default.removeItem(atPath: dir3 + "/model.safetensors")
        try FileManager.default.createDirectory(atPath: dir3 + "/model.safetensors", withIntermediateDirectories: false)
        #expect(message { _ = try HFCheckpoint(directory: dir3) } == "\(dir3)/model.safetensors: is a directory, not a regular file")

        // A FIFO where a file is expected: refused at once (opening it must not block).
        let dir4 = try copyModel()
        try FileManager.default.removeItem(atPath: dir4 + "/config.json")
        #expect(mkfifo(dir4 + "/config.json", 0o644) == 0)
        #expect(message { _ = try HFCheckpoint(directory: dir4) } == "\(dir4)/config.json: is a FIFO (named pipe), not a regular file")
        let fifo = temporaryDirectory() + "/model.gguf"
        #expect(mkfifo(fifo, 0o644) == 0)
        #expect(message { _ = try LoadedModel.load(path: fifo, threads: 1) } == "\(fifo): is a FIFO (named pipe), not a regular file")
        #expect(message { _ = try Tokenizer(path: fifo) } == "\(fifo): is a FIFO (named pipe), not a regular file")

        let typo = dir + "-typo"
        #expect(message { _ = try LoadedModel.tokenizer(forModel: typo) }
                == "\(typo): does not exist (expected a Hugging Face checkpoint directory or a .gguf file)")
        #expect(message { _ = try LoadedModel.load(path: typo, threads: 1) }
                == "\(typo): does not exist (expected a Hugging Face checkpoint directory or a .gguf file)")
    }

    @Test("NaN in the GGUF token embedding is blamed on token_embd, not on layer 0")
    func nanEmbedding() throws {
        let src = Self.gguf.appendingPathComponent("mha-f32-f32.gguf").path
        let g = try GGUFFile(path: src)
        let t = try g.info("token_embd.weight")
        var data = try Data(contentsOf: URL(fileURLWithPath: src))
        let at = t.fileOffset + (1 * t.rowLength + 3) * 4   // row of token 1 (BOS), element 3
        data.replaceSubrange(at..<(at + 4), with: withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { Data($0) })
        let path = temporaryDirectory() + "/nan.gguf"
        try data.write(to: URL(fileURLWithPath: path))
        let m = try LoadedModel.load(path: path, threads: 1)
        #expect(message { _ = try m.model.capture([1, 5, 6], CaptureOptions()) }
                == "the embedding row of token id 1 (position 0) is not finite (NaN/Inf): the token embedding table (token_embd.weight / model.embed_tokens.weight) is damaged")
        _ = try m.model.capture([5, 6], CaptureOptions())   // other rows are fine
    }

    @Test("100,000-deep JSON in config.json, a safetensors header and the index: an error, no stack overflow")
    func deepJSON() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        let dir = try copyModel("mha-f32")
        try Data(#"{"hidden_size": \#(deep)}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(message { _ = try LlamaConfig.load(path: dir + "/config.json") }.hasPrefix(dir + "/config.json: "))
        try Data(#"{"weight_map": \#(deep)}"#.utf8).write(to: URL(fileURLWithPath: dir + "/model.safetensors.index.json"))
        #expect(message { _ = try HFCheckpoint.readIndex(dir + "/model.safetensors.index.json") }
                == "\(dir)/model.safetensors.index.json: not a safetensors index: expected {\"weight_map\": {tensor: file}}")
        let header = #"{"t": \#(deep)}"#
        var bytes = [UInt8]()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        let path = dir + "/deep.safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(message { _ = try SafeTensorsFile(path: path) }.hasPrefix(path + ": "))
    }

    // MARK: Row 7: the safetensors index

    @Test("model.safetensors.index.json naming files outside the directory, absent files or the wrong shard")
    func safetensorsIndex() throws {
        func withIndex(_ edit: (inout [String: String]) -> Void, _ function: String = #function) throws -> String {
            let dir = try copyModel("mha-f32", function)
            let path = dir + "/model.safetensors.index.json"
            var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            var map = obj["weight_map"] as! [String: String]
            edit(&map)
            obj["weight_map"] = map
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: path))
            return dir
        }
        let tensor = "model.norm.weight"
        for name in ["../model-00001-of-00003.safetensors", "/etc/passwd", "..", ""] {
            let dir = try withIndex { $0[tensor] = name }
            #expect(message { _ = try HFCheckpoint(directory: dir) }
                    == "\(dir)/model.safetensors.index.json: weight_map names '\(name)', not a file of this directory (a plain file name is expected)")
        }
        let absent = try withIndex { $0[tensor] = "model-00009-of-00003.safetensors" }
        #expect(message { _ = try HFCheckpoint(directory: absent) }
                == "\(absent)/model-00009-of-00003.safetensors: does not exist (listed in model.safetensors.index.json)")
        let dir = try withIndex { _ in }
        let holder = try HFCheckpoint(directory: dir).tensor(tensor).file.path
        let other = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
            .first { dir + "/" + $0 != holder }!
        let wrong = try withIndex { $0[tensor] = other }
        #expect(message { _ = try HFCheckpoint(directory: wrong) }
                == "\(wrong)/\(other): tensor '\(tensor)': listed in model.safetensors.index.json but not in this shard")
        let notIndex = try withIndex { _ in }
        try Data("[1, 2]".utf8).write(to: URL(fileURLWithPath: notIndex + "/model.safetensors.index.json"))
        #expect(message { _ = try HFCheckpoint(directory: notIndex) }
                == "\(notIndex)/model.safetensors.index.json: not a safetensors index: expected {\"weight_map\": {tensor: file}}")
    }
}
