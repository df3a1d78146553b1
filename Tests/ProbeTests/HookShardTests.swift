import Foundation
@testable import Probe
import Quant
import Formats
import Testing

/// Issue 12: shards with one tensor per hook point (`extract --hooks`), `train --hook`, and what a hostile
/// file may claim about them.
@Suite struct HookShardTests {
    static let labels = (0..<30).map { $0 % 3 }
    static let layers = 2, dModel = 8

    /// A recipe storing `hooks`, read at `position`.
    static func recipe(_ hooks: [String]?, position: String = "last") -> ReadoutRecipe {
        var r = ReadoutRecipe(template: "raw", suffix: "", systemPrompt: nil, maxTokens: 64, withEmbeddings: false,
                              tokenizer: "sha256:" + String(repeating: "0", count: 64), position: position)
        r.hooks = hooks
        return r
    }

    static func metadata(_ hooks: [String]?, dtype: ActivationType = .f32) -> ShardMetadata {
        ShardMetadata(model: "test-model", quantization: "F32", labels: ["a", "b", "c"], readout: recipe(hooks),
                      layers: Array(0..<layers), dtype: dtype, dModel: dModel)
    }

    /// Separable values of hook `h` (different for each hook), [rows, layers, dModel].
    static func values(hook h: Int) -> [Float] {
        (0..<(labels.count * layers * dModel)).map { i in
            let row = i / (layers * dModel), j = i % dModel
            return Float(sin(Double(i * (h + 2)))) * 0.5 + (j == (labels[row] + h) % dModel ? 2 : 0)
        }
    }

    /// A shard directory of `hooks` (values(hook: k) for the k-th).
    static func write(_ dir: String, hooks: [String]?) throws {
        let meta = metadata(hooks)
        let w = try ShardWriter(directory: dir, worker: 0, workers: 1, metadata: meta, rowsPerShard: 8, config: ["test": "1"])
        let per = layers * dModel
        let all = meta.hooks.indices.map { values(hook: $0) }
        for i in 0..<labels.count {
            let row = all.flatMap { $0[(i * per)..<((i + 1) * per)] }
            try row.withUnsafeBufferPointer { try w.append(row: i, label: labels[i], nTokens: 5, activations: $0.baseAddress!) }
        }
        try w.finish()
    }

    @Test("shards hold one tensor per hook: each reads back; train --hook trains on it exactly as on a resid_post-only copy, resident and streamed; the probes record the hook")
    func trainOnAHook() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.write(dir + "/both", hooks: ["mlp_out", "resid_post"])
        // The same mlp_out values stored as the only (resid_post) tensor.
        let single = dir + "/single"
        let meta = Self.metadata(nil)
        let w = try ShardWriter(directory: single, worker: 0, workers: 1, metadata: meta, rowsPerShard: 8, config: ["test": "1"])
        let v = Self.values(hook: 0)
        try v.withUnsafeBufferPointer { p in
            for i in 0..<Self.labels.count { try w.append(row: i, label: Self.labels[i], nTokens: 5, activations: p.baseAddress! + i * 16) }
        }
        try w.finish()

        let sd = try ShardDirectory(path: dir + "/both")
        #expect(sd.metadata.hooks == ["mlp_out", "resid_post"] && sd.metadata.readout?.hooks == ["mlp_out", "resid_post"])
        var mlp: [Float] = [], post: [Float] = []
        for p in sd.shardPaths {
            mlp += try Shard.read(path: p, hook: "mlp_out").residPost
            post += try Shard.read(path: p).residPost
        }
        #expect(mlp == Self.values(hook: 0) && post == Self.values(hook: 1))
        #expect(try Shard.metadata(path: sd.shardPaths[0]) == sd.metadata)

        for memory in [1 << 30, 600] {   // resident, then streamed every epoch
            func train(_ shards: String, hook: String, _ out: String) throws -> ProbeSet {
                var o = TrainBadInputTests.options(dir, [shards])
                o.outDirectory = dir + "/" + out
                o.hook = hook
                o.maxMemory = memory
                o.config.epochs = 3
                _ = try TrainJob.run(o)
                return try ProbeSet.load(directory: o.outDirectory)
            }
            let a = try train(dir + "/both", hook: "mlp_out", "a\(memory)")
            let b = try train(single, hook: "resid_post", "b\(memory)")
            let c = try train(dir + "/both", hook: "resid_post", "c\(memory)")
            for l in 0..<Self.layers {
                #expect(a.probes[l]!.weight == b.probes[l]!.weight && a.probes[l]!.bias == b.probes[l]!.bias, "layer \(l), memory \(memory)")
                #expect(a.probes[l]!.weight != c.probes[l]!.weight, "resid_post must train on other values")
            }
            #expect(a.readout?.hooks == ["mlp_out"] && a.readout?.hookList == ["mlp_out"])
            #expect(c.readout?.hooks == nil && c.readout?.hookList == ["resid_post"])
            #expect(try ReadoutRecipe.File.read(directory: dir + "/a\(memory)")?.readout?.hooks == ["mlp_out"])
        }
        // A hook the shards do not hold: refused naming the ones they do.
        var o = TrainBadInputTests.options(dir, [dir + "/both"])
        o.hook = "attn_out"
        TrainBadInputTests.expectFailure(o, ["--hook attn_out: the shards hold no 'attn_out' activations; available: mlp_out, resid_post",
                                             "extract with --hooks attn_out"])
        o.hook = "hook_mlp_out"
        TrainBadInputTests.expectFailure(o, ["'hook_mlp_out' is not a hook point"])
        // Older shards (no recipe) hold resid_post only.
        var old = TrainBadInputTests.options(dir, [try TrainBadInputTests.shards(dir)])
        old.hook = "mlp_out"
        TrainBadInputTests.expectFailure(old, ["available: resid_post"])
    }

    /// Shard content: the small tensors, then `acts` (name, dtype, shape, bytes), with `meta` as metadata.
    static func content(_ meta: [String: String], _ acts: [(String, SafeTensorsDType, [Int], [UInt8])], n: Int = 2) -> [UInt8] {
        let l = [Int64](repeating: 0, count: n), r = (0..<n).map(Int64.init), t = [Int32](repeating: 3, count: n)
        return l.withUnsafeBytes { lb in r.withUnsafeBytes { rb in t.withUnsafeBytes { tb in
            func go(_ i: Int, _ acc: [(SafeTensorsWriter.Spec, UnsafeRawBufferPointer)]) -> [UInt8] {
                if i == acts.count {
                    return SafeTensors.encode([(.init("label", .i64, [n]), lb), (.init("row", .i64, [n]), rb), (.init("n_tokens", .i32, [n]), tb)] + acc,
                                              metadata: meta)
                }
                return acts[i].3.withUnsafeBytes { go(i + 1, acc + [(.init(acts[i].0, acts[i].1, acts[i].2), $0)]) }
            }
            return go(0, [])
        } } }
    }

    @Test("hostile hook metadata and tensors: unknown, repeated or empty hooks, a bad position, embeddings with other hooks, a listed hook's tensor missing, misshapen or of another type, a hook not stored")
    func hostileHooks() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/" + Shard.fileName(worker: 0, index: 0)
        let n = 2, shape = [n, Self.layers, Self.dModel]
        let f32 = [UInt8](repeating: 0, count: n * Self.layers * Self.dModel * 4)
        let good: [(String, SafeTensorsDType, [Int], [UInt8])] = [("mlp_out", .f32, shape, f32), ("resid_post", .f32, shape, f32)]
        func check(meta: ShardMetadata? = nil, recipeJSON: String? = nil, acts: [(String, SafeTensorsDType, [Int], [UInt8])] = good,
                   hook: String = "resid_post", _ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
            var m = (meta ?? Self.metadata(["mlp_out", "resid_post"])).stringMap
            if let j = recipeJSON { m["readout"] = j }
            try Data(try Zstd.compress(Self.content(m, acts), level: 3)).write(to: URL(fileURLWithPath: path))
            HostileFileTests.expectError([path] + fragments, sourceLocation: sourceLocation) { _ = try Shard.read(path: path, hook: hook) }
        }
        // The good file reads, both hooks.
        try Data(try Zstd.compress(Self.content(Self.metadata(["mlp_out", "resid_post"]).stringMap, good), level: 3)).write(to: URL(fileURLWithPath: path))
        #expect(try Shard.read(path: path, hook: "mlp_out").count == n && (try Shard.read(path: path).count) == n)

        let recipe = Self.recipe(["mlp_out", "resid_post"]).json
        try check(recipeJSON: recipe.replacingOccurrences(of: "\"mlp_out\"", with: "\"hook_mlp_out\""),
                  ["readout recipe: 'hooks': 'hook_mlp_out' is not a hook point (resid_pre, attn_out, resid_mid, mlp_out, resid_post)"])
        try check(recipeJSON: recipe.replacingOccurrences(of: "\"mlp_out\"", with: "\"resid_post\""), ["'hooks' lists a hook twice"])
        try check(recipeJSON: recipe.replacingOccurrences(of: "[\"mlp_out\",\"resid_post\"]", with: "[]"), ["'hooks' is empty"])
        try check(recipeJSON: recipe.replacingOccurrences(of: "\"hooks\":[\"mlp_out\",\"resid_post\"]", with: "\"hooks\":\"mlp_out\""),
                  ["'readout' is not a readout recipe"])
        try check(recipeJSON: recipe.replacingOccurrences(of: "\"position\":\"last\"", with: "\"position\":\"first\""),
                  ["readout recipe: 'position' 'first' is not one of last, mean, suffix-mean"])
        try check(recipeJSON: recipe.replacingOccurrences(of: "\"with_embeddings\":false", with: "\"with_embeddings\":true"),
                  ["'with_embeddings' (the embedding output as layer 0) needs 'hooks' resid_post alone, not mlp_out,resid_post"])
        try check(acts: [("resid_post", .f32, shape, f32)], ["shard lacks the tensor 'mlp_out'"])
        try check(acts: [("mlp_out", .f32, [n, Self.layers, Self.dModel + 1], f32 + [UInt8](repeating: 0, count: n * Self.layers * 4)),
                   ("resid_post", .f32, shape, f32)], ["mlp_out has shape [2, 2, 9], expected [2, 2, 8]"])
        try check(acts: [("mlp_out", .f32, shape, f32), ("resid_post", .f32, [1, Self.layers, Self.dModel], Array(f32.prefix(f32.count / 2)))],
                  ["resid_post has shape [1, 2, 8], expected [2, 2, 8]"])
        try check(acts: [("mlp_out", .f16, shape, Array(f32.prefix(f32.count / 2))), ("resid_post", .f32, shape, f32)],
                  ["mlp_out is F16 but the metadata says F32"])
        try check(hook: "attn_out", ["holds no 'attn_out' activations; its hooks: mlp_out, resid_post"])
        // Only mlp_out stored: reading resid_post (the default) says what is there.
        try check(meta: Self.metadata(["mlp_out"]), acts: [("mlp_out", .f32, shape, f32)], ["holds no 'resid_post' activations; its hooks: mlp_out"])
        // The manifest's bound on rows per byte counts every hook's bytes.
        let meta = Self.metadata(["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"])
        #expect(meta.rowBytes == 5 * Self.layers * Self.dModel * 4)
    }
}
