import Foundation
import Formats
import Testing

/// `generate` (issue 13): greedy ids as transformers', steering from a vector file or from trained probes,
/// reproducible sampling, and its refusals.
@Suite struct GenerateCLITests {
    static let model = CLI.fixtures.appendingPathComponent("models/mha-f32").path
    static let steer = CLI.fixtures.appendingPathComponent("generation/steer.safetensors").path

    /// transformers' tokens for case `name` of the generation fixtures (EOS dropped), per variant.
    static func reference(_ name: String, _ variant: String) throws -> [Int] {
        let g = try JSONSerialization.jsonObject(with: Data(contentsOf: CLI.fixtures.appendingPathComponent("generation/generation.json"))) as! [String: Any]
        let rows = (g["models"] as! [String: Any])["mha-f32"] as! [[String: Any]]
        let row = rows.first { $0["case"] as? String == name }!
        let tokens = (row[variant] as! [String: Any])["tokens"] as! [Int]
        return tokens.last == 2 ? Array(tokens.dropLast()) : tokens
    }

    static func ids(_ args: [String]) throws -> [Int] {
        let r = try CLI.run(["generate", "--model", model, "--template", "raw", "--max-new-tokens", "24", "--ids", "--threads", "1"] + args)
        try #require(r.status == 0, "\(args): \(r.stderr)")
        return r.stdout.split(whereSeparator: \.isWhitespace).map { Int($0)! }
    }

    @Test("--ids equals transformers' greedy tokens, plain and with one or two steering hooks")
    func idsEqualTransformers() throws {
        // Case "hello" is the raw text "Hello".
        #expect(try Self.ids(["Hello"]) == (try Self.reference("hello", "plain")))
        #expect(try Self.ids(["--steer-vector", Self.steer + ":a", "--steer-layer", "1", "--steer-strength", "12", "Hello"])
                == (try Self.reference("hello", "steered")))
        #expect(try Self.ids(["--steer-vector", Self.steer + ":b", "--steer-vector", Self.steer + ":a", "--steer-layer", "0", "--steer-layer", "1",
                              "--steer-strength=-6", "--steer-strength", "12", "Hello"])
                == (try Self.reference("hello", "steered2")))
    }

    @Test("the default output streams the generated text; --margins keeps the check output")
    func outputs() throws {
        let ids = try Self.ids(["Hello"])
        let text = try CLI.run(["generate", "--model", Self.model, "--template", "raw", "--max-new-tokens", "24", "Hello"])
        let check = try CLI.run(["generate", "--model", Self.model, "--template", "raw", "--count", "24", "--margins", "Hello"])
        try #require(text.status == 0 && check.status == 0, "\(text.stderr)\(check.stderr)")
        let lines = check.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first { $0.hasPrefix("generated: ") } == "generated: " + ids.map(String.init).joined(separator: " "))
        #expect(lines.first { $0.hasPrefix("margins: ") }?.split(separator: " ").count == ids.count + 1)
        #expect(!text.stdout.isEmpty && text.stdout.hasSuffix("\n") && !text.stdout.contains("generated:"), "\(text.stdout)")
    }

    /// A probes directory for the 64-wide fixtures: classes calm/upset at blocks 0, 1, 2 (best 1), weights [2, 64].
    static func makeProbes(_ dir: String) throws -> (path: String, rows: [[Float]]) {
        let probes = dir + "/probes"
        try FileManager.default.createDirectory(atPath: probes, withIntermediateDirectories: true)
        let d = 64
        let rows: [[Float]] = (0..<3).map { l in (0..<(2 * d)).map { i in 0.01 * sin(Float(i * 7 + l * 13)) } }   // small: probabilities stay away from 0 and 1
        var specs: [SafeTensorsWriter.Spec] = []
        for l in 0..<3 { specs += [.init("layer\(l).weight", .f32, [2, d]), .init("layer\(l).bias", .f32, [2])] }
        let w = try SafeTensorsWriter(path: probes + "/probes.safetensors", tensors: specs, metadata: [
            "labels": #"["calm","upset"]"#, "layers": "[0,1,2]", "best_layer": "1", "d_model": "\(d)"])
        for l in 0..<3 { try w.write(rows[l]); try w.write([Float](repeating: 0, count: 2)) }
        try w.commit()
        return (probes, rows)
    }

    @Test("predict --steer-…: at the steered block the class's logit rises by A·‖w‖; the run says it reads steered residuals")
    func predictSteered() throws {
        let dir = scratch()
        let (probes, rows) = try Self.makeProbes(dir)
        func logits(_ extra: [String]) throws -> (values: [[Double]], stderr: String) {
            let r = try CLI.run(["predict", "--model", Self.model, "--probes", probes, "--layer", "all", "--json", "--allow-other-model"] + extra + ["Hello there"])
            try #require(r.status == 0, "\(r.stderr)")
            let o = try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n")[0].utf8)) as! [String: Any]
            let layers = o["layers"] as! [[String: Any]]
            return (layers.map { l in
                let p = l["probabilities"] as! [String: Double]
                return ["calm", "upset"].map { log(p[$0]! / (1 - p[$0]!)) }
            }, r.stderr)
        }
        let plain = try logits([])
        let steered = try logits(["--steer-probes", probes, "--steer-class", "upset", "--steer-layer", "0", "--steer-strength", "20"])
        let w = rows[0][64..<128]
        let norm = Double(w.reduce(0) { $0 + $1 * $1 }.squareRoot())
        #expect(abs((steered.values[0][1] - plain.values[0][1]) - 20 * norm) < 1e-3, "upset logit at block 0: \(plain.values[0][1]) -> \(steered.values[0][1]), expected +\(20 * norm)")
        #expect(steered.values[1] != plain.values[1], "block 1 reads the steered residual")
        #expect(steered.stderr.contains("the probes were trained on unsteered residuals; this run reads steered (block 0 += 20.0·v"), "\(steered.stderr)")
        #expect(!plain.stderr.contains("steered"), "\(plain.stderr)")
    }

    @Test("--steer-probes/--steer-class steers along the class's weight row at the best layer, as --steer-vector with that row")
    func steerProbes() throws {
        let dir = scratch()
        let (probes, rows) = try Self.makeProbes(dir)
        let d = 64
        // The "upset" row of the layer-1 probe as a vector file.
        let v = try SafeTensorsWriter(path: dir + "/v.safetensors", tensors: [.init("upset", .f32, [d])])
        try v.write(Array(rows[1][d..<(2 * d)]))
        try v.commit()

        let fromProbes = try Self.ids(["--steer-probes", probes, "--steer-class", "upset", "--steer-strength", "10", "Hello"])
        let fromVector = try Self.ids(["--steer-vector", dir + "/v.safetensors", "--steer-layer", "1", "--steer-strength", "10", "Hello"])
        #expect(fromProbes == fromVector)
        #expect(fromProbes != (try Self.ids(["Hello"])), "a strength of 10 along a unit direction changes these tokens")
        let explicit = try Self.ids(["--steer-probes", probes, "--steer-class", "upset", "--steer-layer", "2", "--steer-strength", "10", "Hello"])
        #expect(explicit != fromProbes)

        let bad = try CLI.run(["generate", "--model", Self.model, "--steer-probes", probes, "--steer-class", "joy", "--steer-strength", "1", "Hi"])
        #expect(bad.status != 0 && bad.stderr.contains("--steer-class joy: not one of the probes' classes in \(probes) (calm, upset)"), "\(bad.stderr)")
    }

    @Test("sampling is reproducible under --seed")
    func seeded() throws {
        let a = try Self.ids(["--temperature", "1", "--seed", "5", "Hello"])
        #expect(a.count == 24)
        #expect(try Self.ids(["--temperature", "1", "--seed", "5", "Hello"]) == a)
        #expect(try Self.ids(["--temperature", "1", "--seed", "6", "Hello"]) != a)
        #expect(try Self.ids(["--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "Hello"]) == (try Self.ids(["--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "Hello"])))
    }

    @Test("steering and sampling flags that do not fit are refused with a message naming the flag")
    func refusals() throws {
        let two = scratch() + "/two.safetensors"
        let w = try SafeTensorsWriter(path: two, tensors: [.init("x", .f32, [64]), .init("y", .f32, [64])])
        try w.write([Float](repeating: 1, count: 64)); try w.write([Float](repeating: 2, count: 64)); try w.commit()
        let cases: [([String], String)] = [
            (["--steer-vector", two, "--steer-layer", "0", "--steer-strength", "1"], "holds 2 tensors; name one as \(two):KEY"),
            (["--steer-vector", two + ":z", "--steer-layer", "0", "--steer-strength", "1"], "has no tensor 'z' (it has: x, y)"),
            (["--steer-vector", two + ":x", "--steer-layer", "3", "--steer-strength", "1"], "layer 3 is not a block of this model (0...2)"),
            (["--steer-vector", two + ":x", "--steer-strength", "1"], "--steer-vector needs --steer-layer L"),
            (["--steer-vector", two + ":x", "--steer-layer", "0"], "--steer-strength: give one per intervention (1) or one for all; got 0"),
            (["--steer-class", "joy", "--steer-strength", "1"], "--steer-class needs --steer-probes DIR"),
            (["--steer-layer", "1"], "need a --steer-vector or --steer-class"),
            (["--top-p", "0.5"], "--top-p and --seed go with --temperature T > 0"),
            (["--temperature", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
            (["--ids", "--margins"], "--ids and --margins are two output formats"),
        ]
        for (args, message) in cases {
            let r = try CLI.run(["generate", "--model", Self.model] + args + ["Hi"])
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }
}

/// The same write point for `residuals` and `extract`: steered outputs hold the steered residuals and say so.
@Suite struct SteeredReadoutTests {
    @Test("residuals --steer-…: block L's output moves by A·v/‖v‖ at every position, earlier blocks do not; the readout records it")
    func residuals() throws {
        let dir = scratch()
        try "Hello\nHow are you?\n".write(toFile: dir + "/p.txt", atomically: true, encoding: .utf8)
        let base = ["residuals", "--model", GenerateCLITests.model, "--prompts", dir + "/p.txt", "--template", "raw", "--positions", "all", "--threads", "1"]
        let plain = try CLI.run(base + ["--out", dir + "/plain.safetensors"])
        let steered = try CLI.run(base + ["--out", dir + "/steered.safetensors", "--steer-vector", GenerateCLITests.steer + ":a",
                                          "--steer-layer", "1", "--steer-strength", "12"])
        try #require(plain.status == 0 && steered.status == 0, "\(plain.stderr)\(steered.stderr)")
        let p = try SafeTensorsFile(path: dir + "/plain.safetensors"), s = try SafeTensorsFile(path: dir + "/steered.safetensors")
        let a = try SafeTensorsFile(path: GenerateCLITests.steer).floats("a")
        let norm = a.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let d = 64, T = try p.info("p0.tokens").shape[0]
        let rp = try p.floats("p0.resid_post"), rs = try s.floats("p0.resid_post")   // [3, T, d]
        #expect(Array(rp[0..<(T * d)]) == Array(rs[0..<(T * d)]), "block 0 is before the intervention")
        var worst: Float = 0
        for t in 0..<T { for i in 0..<d { worst = max(worst, abs(rs[T * d + t * d + i] - rp[T * d + t * d + i] - 12 * a[i] / norm)) } }
        #expect(worst < 1e-4, "block 1 output moved by 12·a/‖a‖ at every position (max deviation \(worst))")
        #expect(Array(rp[(2 * T * d)...]) != Array(rs[(2 * T * d)...]), "block 2 reads the steered residual")

        #expect(p.metadata["readout"].map { !$0.contains("steering") } == true, "\(p.metadata["readout"] ?? "")")
        let recorded = try #require(s.metadata["readout"])
        let obj = try JSONSerialization.jsonObject(with: Data(recorded.utf8)) as! [String: Any]
        let list = try #require(obj["steering"] as? [[String: Any]], "\(recorded)")
        #expect(list.count == 1 && list[0]["layer"] as? Int == 1 && list[0]["strength"] as? Double == 12
                && list[0]["source"] as? String == GenerateCLITests.steer + ":a"
                && (list[0]["vector"] as? String)?.hasPrefix("sha256:") == true, "\(recorded)")
    }

    @Test("extract --steer-…: the shards' readout records the intervention; resuming without it is refused")
    func extract() throws {
        let dir = scratch()
        try "message,label\nI am glad,happy\nThis is awful,sad\nFine I guess,neutral\n".write(toFile: dir + "/d.csv", atomically: true, encoding: .utf8)
        let steer = ["--steer-vector", GenerateCLITests.steer + ":b", "--steer-layer", "0", "--steer-strength", "3"]
        let base = ["extract", "--model", GenerateCLITests.model, "--data", dir + "/d.csv", "--out", dir + "/shards", "--threads", "1"]
        let r = try CLI.run(base + steer)
        try #require(r.status == 0, "\(r.stderr)")
        let info = try CLI.run(["shards", "info", dir + "/shards"])
        #expect(info.stdout.contains("\"steering\":[{\"layer\":0") && info.stdout.contains(GenerateCLITests.steer + ":b"), "\(info.stdout)")
        let unsteered = try CLI.run(base)
        #expect(unsteered.status != 0 && unsteered.stderr.contains("--steer-…"), "\(unsteered.stderr)")
    }
}

@Suite struct DecodeBenchTests {
    @Test("bench --decode: tokens/s per context and layer, weights and keys/values read per token")
    func decodeJSON() throws {
        let r = try CLI.run(["bench", "--model", GenerateCLITests.model, "--weights", "f32", "--decode", "--contexts", "8,20",
                             "--tokens", "4", "--repeats", "1", "--threads", "1", "--json"])
        try #require(r.status == 0, "\(r.stderr)")
        let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        // mha-f32 in f32: per layer 4·64·64 + 3·128·64 weights ·4 bytes + two norms; head 384·64; final norm; one embedding row.
        let layer = (4 * 64 * 64 + 3 * 128 * 64) * 4 + 2 * 64 * 4
        #expect(o["layer_weight_bytes"] as? Int == layer)
        #expect(o["weight_bytes_per_token"] as? Int == 3 * layer + 384 * 64 * 4 + 64 * 4 + 64 * 4)
        let contexts = try #require(o["contexts"] as? [[String: Any]])
        #expect(contexts.map { $0["context"] as? Int } == [8, 20])
        // Keys and values of 3 layers × 64 floats, for positions 0...p averaged over p = 8..<12.
        #expect(contexts[0]["kv_bytes_per_token"] as? Double == 2 * 3 * 64 * 4 * (8 + 2.5))
        for c in contexts {
            #expect((c["model_tokens_per_second"] as? Double ?? 0) > 0 && (c["layers"] as? [Any])?.count == 3)
        }
        #expect((o["memory_bandwidth_gbps"] as? Double ?? 0) > 0)
        let bad = try CLI.run(["bench", "--model", GenerateCLITests.model, "--decode", "--contexts", "8,x"])
        #expect(bad.status != 0 && bad.stderr.contains("--contexts must be comma-separated positive integers"), "\(bad.stderr)")
    }
}
