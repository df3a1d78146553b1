import Foundation
import Model
import Quant
import Formats
import Testing

/// Bad input gets one clear error naming the file (and the tensor or key), never a crash.
@Suite struct BadInputTests {
    /// A copy of a fixture model that a test may damage.
    func copyModel(_ name: String = "gqa-bf16") throws -> String {
        let dir = temporaryDirectory() + "/model"
        try FileManager.default.copyItem(atPath: Fixtures.model(name), toPath: dir)
        return dir
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return error.localizedDescription }
        return "no error"
    }

    @Test func missingDirectoryAndFiles() throws {
        #expect(message { _ = try HFCheckpoint(directory: "/nonexistent/model") }.contains("/nonexistent/model"))
        let dir = try copyModel()
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        #expect(message { _ = try HFCheckpoint(directory: dir) }.contains("no model.safetensors"))
        try FileManager.default.removeItem(atPath: dir + "/config.json")
        #expect(message { _ = try HFCheckpoint(directory: dir) }.contains("config.json"))
    }

    @Test func truncatedSafetensors() throws {
        let dir = try copyModel()
        let path = dir + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count - 1000).write(to: URL(fileURLWithPath: path))
        let m = message { _ = try HFCheckpoint(directory: dir) }
        #expect(m.contains(path) && m.contains("tensor '") && m.contains("truncated"), "\(m)")
        try data.prefix(5).write(to: URL(fileURLWithPath: path))
        #expect(message { _ = try HFCheckpoint(directory: dir) }.contains("truncated"))
    }

    @Test func absurdHeaderLength() throws {
        let dir = try copyModel()
        let path = dir + "/model.safetensors"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 60).littleEndian) { Data($0) })
        try data.write(to: URL(fileURLWithPath: path))
        let m = message { _ = try HFCheckpoint(directory: dir) }
        #expect(m.contains(path) && m.contains("absurd"), "\(m)")
    }

    /// Rewrites the JSON header of a safetensors file (keeping the data) through `edit`.
    func editHeader(_ path: String, _ edit: (inout [String: Any]) -> Void) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        var header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
        edit(&header)
        var json = try JSONSerialization.data(withJSONObject: header)
        // Keep the header length (pad with spaces) so the data offsets stay valid.
        precondition(json.count <= n)
        json.append(Data(repeating: 0x20, count: n - json.count))
        try (data.prefix(8) + json + data.suffix(from: 8 + n)).write(to: URL(fileURLWithPath: path))
    }

    @Test func unknownDtypeAndWrongShapes() throws {
        let dir = try copyModel()
        let path = dir + "/model.safetensors"
        let tensor = "model.layers.1.mlp.up_proj.weight"
        try editHeader(path) { h in var e = h[tensor] as! [String: Any]; e["dtype"] = "Q4_K"; h[tensor] = e }
        var m = message { _ = try HFCheckpoint(directory: dir) }
        #expect(m.contains(tensor) && m.contains("unknown dtype 'Q4_K'"), "\(m)")

        let dir2 = try copyModel()
        try editHeader(dir2 + "/model.safetensors") { h in
            var e = h[tensor] as! [String: Any]; let s = e["shape"] as! [Int]; e["shape"] = [s[1], s[0]]; h[tensor] = e
        }
        m = message { _ = try HFCheckpoint(directory: dir2) }
        #expect(m.contains(tensor) && m.contains("does not match"), "\(m)")

        let dir3 = try copyModel()
        try editHeader(dir3 + "/model.safetensors") { h in
            var e = h[tensor] as! [String: Any]; e["shape"] = [1]; h[tensor] = e
        }
        m = message { _ = try HFCheckpoint(directory: dir3) }
        #expect(m.contains(tensor) && m.contains("data_offsets span"), "\(m)")

        let dir4 = try copyModel()
        try editHeader(dir4 + "/model.safetensors") { h in h[tensor] = nil }
        m = message { _ = try HFCheckpoint(directory: dir4) }
        #expect(m.contains(tensor) && m.contains("missing"), "\(m)")
    }

    @Test func configDisagreesWithWeights() throws {
        let dir = try copyModel()
        var config = try LlamaConfig.load(path: dir + "/config.json")
        config.intermediateSize += 1
        try config.jsonData().write(to: URL(fileURLWithPath: dir + "/config.json"))
        let m = message { _ = try HFCheckpoint(directory: dir) }
        #expect(m.contains("gate_proj") && m.contains("config.json"), "\(m)")
    }

    @Test func nanInWeightsIsReported() throws {
        let dir = try copyModel("gqa-f16-theta")
        let path = dir + "/model.safetensors"
        let st = try SafeTensorsFile(path: path)
        let info = try st.info("model.layers.1.self_attn.o_proj.weight")
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[info.fileOffset + 2 * 5] = 0x00
        data[info.fileOffset + 2 * 5 + 1] = 0x7E   // f16 NaN at element 5
        try data.write(to: URL(fileURLWithPath: path))
        let m = message { _ = try LoadedModel.load(path: dir, threads: 1) }
        #expect(m.contains("model.layers.1.self_attn.o_proj.weight") && m.contains("non-finite") && m.contains("element 5"), "\(m)")
    }

    @Test func unsupportedConfigsNameTheKey() throws {
        let base = try String(contentsOfFile: Fixtures.model("mha-f32") + "/config.json", encoding: .utf8)
        func check(_ key: String, _ edit: (inout [String: Any]) -> Void) throws {
            var obj = try JSONSerialization.jsonObject(with: Data(base.utf8)) as! [String: Any]
            edit(&obj)
            let path = temporaryDirectory() + "/config.json"
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: path))
            do {
                _ = try LlamaConfig.load(path: path)
                Issue.record("config with bad '\(key)' was accepted")
            } catch let e as ConfigError {
                #expect(e.key == key && e.file == path, "\(e)")
            }
        }
        try check("rope_scaling") { $0["rope_scaling"] = ["type": "dynamic", "factor": 2.0] }
        try check("model_type") { $0["model_type"] = "gemma" }
        try check("architectures") { $0["model_type"] = "mistral" }   // a Mistral config naming LlamaForCausalLM
        try check("hidden_act") { $0["hidden_act"] = "gelu" }
        try check("hidden_size") { $0["hidden_size"] = nil }
        try check("num_key_value_heads") { $0["num_key_value_heads"] = 3 }
        try check("attention_bias") { $0["attention_bias"] = true }
        try check("hidden_size") { $0["hidden_size"] = "sixty-four" }
    }

    @Test func configDefaults() throws {
        let base = try String(contentsOfFile: Fixtures.model("mha-f32") + "/config.json", encoding: .utf8)
        var obj = try JSONSerialization.jsonObject(with: Data(base.utf8)) as! [String: Any]
        for k in ["num_key_value_heads", "rope_theta", "head_dim", "tie_word_embeddings", "torch_dtype", "dtype"] { obj[k] = nil }
        obj["rope_scaling"] = NSNull()
        obj["eos_token_id"] = [2, 5]
        let path = temporaryDirectory() + "/config.json"
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: path))
        let c = try LlamaConfig.load(path: path)
        #expect(c.kvHeads == c.numAttentionHeads && c.theta == 10000 && c.headDimension == 16 && !c.tiedEmbeddings)
        #expect(c.eosTokenId?.first == 2)
        let f16 = try LlamaConfig.load(path: Fixtures.model("gqa-f16-theta") + "/config.json")
        #expect(f16.headDimension == 24 && f16.qDim == 96 && f16.theta == 500000 && f16.rmsNormEps == 1e-6)
        #expect(f16.storageDtype == "float16")
    }

    @Test func tokenOutsideVocabulary() throws {
        let m = try Fixtures.loadedModel("mha-f32")
        #expect(throws: ForwardError.self) { _ = try m.model.capture([1, 99999], CaptureOptions()) }
        #expect(throws: ForwardError.self) { _ = try m.model.capture([], CaptureOptions()) }
    }
}
