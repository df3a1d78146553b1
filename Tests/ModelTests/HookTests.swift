import Foundation
import Model
import Quant
import Formats
import Testing

/// Block hook points (TransformerLens names) against transformers' forward hooks on the fixture models
/// (Tests/fixtures/hooks/make_hook_fixtures.py), and the promise that reading them changes nothing else.
@Suite struct HookTests {
    static let tolerance: Float = 1e-4
    static let hooksDir = Fixtures.root.appendingPathComponent("hooks")
    static func reference(_ model: String) -> String { hooksDir.appendingPathComponent("\(model).safetensors").path }
    static let all = Hook.allCases

    @Test("every hook of every layer matches HF's forward hooks within 1e-4, at every position and at the last", arguments: Fixtures.models)
    func matchesHF(model name: String) throws {
        let m = try Fixtures.loadedModel(name)
        let ref = try SafeTensorsFile(path: Self.reference(name))
        let L = m.config.numHiddenLayers, d = m.config.hiddenSize
        var worst: Float = 0
        defer { print("\(name): worst hook rel error \(worst)") }
        for i in 0..<2 {
            let ids = try ref.integers("p\(i).tokens").map(Int32.init)
            let T = ids.count
            let every = try m.model.capture(ids, CaptureOptions(positions: .all, hooks: Self.all))
            let last = try m.model.capture(ids, CaptureOptions(positions: .last, hooks: Self.all))
            for h in Self.all {
                let expected = try ref.floats("p\(i).\(h.rawValue)")   // [L, T, d]
                try #require(expected.count == L * T * d && every.hooks[h]!.count == L * T * d && last.hooks[h]!.count == L * d)
                for l in 0..<L {
                    let want = Array(expected[(l * T * d)..<((l + 1) * T * d)])
                    let e = relativeError(Array(every.hooks[h]![(l * T * d)..<((l + 1) * T * d)]), want)
                    let wantLast = Array(want[((T - 1) * d)...])
                    let eLast = relativeError(Array(last.hooks[h]![(l * d)..<((l + 1) * d)]), wantLast)
                    worst = max(worst, e, eLast)
                    #expect(e <= Self.tolerance, "\(name) p\(i) \(h.rawValue) layer \(l): rel error \(e)")
                    #expect(eLast <= Self.tolerance, "\(name) p\(i) \(h.rawValue) layer \(l), last position: rel error \(eLast)")
                }
            }
        }
    }

    /// The hooks are different things: a hook read from the wrong place is caught by the reference test.
    @Test("the reference tells the hooks apart (each hook is > 1e-2 away from every other at some layer)")
    func hooksAreDistinct() throws {
        let ref = try SafeTensorsFile(path: Self.reference("mha-f32"))
        for a in Self.all {
            for b in Self.all where a != b {
                #expect(relativeError(try ref.floats("p1.\(a.rawValue)"), try ref.floats("p1.\(b.rawValue)")) > 1e-2, "\(a) vs \(b)")
            }
        }
    }

    /// The residual stream and the logits do not change by a bit when hooks are read: f32 (OpenBLAS),
    /// Q8_0 (the K-blocked int8 kernel), a short prompt, and a 300-token one (sgemm attention).
    @Test("reading every hook leaves resid_post, the embedding and the logits bit-identical (f32 and Q8_0, short and long prompts)")
    func nothingElseChanges() throws {
        let models = [try Fixtures.loadedModel("gqa-f16-theta"),
                      try LoadedModel.load(path: Fixtures.root.appendingPathComponent("gguf/gqa-bf16-q8_0.gguf").path,
                                           includeHead: true, threads: 2)]
        let long = (0..<300).map { Int32(3 + ($0 * 37) % 380) }
        for m in models {
            for ids in [Fixtures.cases[0].ids, long] {
                for positions in [Positions.last, .all] {
                    let plain = try m.model.capture(ids, CaptureOptions(positions: positions, embeddings: true, logits: true))
                    let hooked = try m.model.capture(ids, CaptureOptions(positions: positions, embeddings: true, logits: true,
                                                                          hooks: Self.all))
                    #expect(plain.residPost == hooked.residPost, "\(m.quantization) \(ids.count) tokens \(positions)")
                    #expect(plain.embedding == hooked.embedding)
                    #expect(plain.logitsLast == hooked.logitsLast)
                    // The residual stream itself: resid_pre of block 0 is the embedding, of block L+1 resid_post of L.
                    let n = plain.embedding!.count, pre = hooked.hooks[.residPre]!, post = hooked.residPost
                    #expect(Array(pre[0..<n]) == plain.embedding!)
                    #expect(Array(pre[n...]) == Array(post[..<(post.count - n)]))
                }
            }
        }
    }

    @Test("steering: mlp_out is the MLP's output (unsteered), resid_post includes the intervention")
    func steeringIsAfterMLPOut() throws {
        let m = try Fixtures.loadedModel("mha-f32")
        let c = m.config, d = c.hiddenSize
        let v = (0..<d).map { Float(($0 * 7) % 11) - 5 }
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let steering = try Steering([Intervention(layer: 1, vector: v, strength: 8, source: "test")], config: c)
        let ids = Fixtures.cases[0].ids
        let options = CaptureOptions(positions: .last, hooks: [.mlpOut, .residMid, .residPost])
        let plain = try m.model.capture(ids, options)
        let steered = try m.model.capture(ids, options, steering: steering)
        func layer(_ r: PromptResiduals, _ h: Hook, _ l: Int) -> [Float] { Array(r.hooks[h]![(l * d)..<((l + 1) * d)]) }
        // Layer 0 and layer 1's sublayers run before the write point: identical.
        #expect(layer(plain, .mlpOut, 1) == layer(steered, .mlpOut, 1))
        #expect(layer(plain, .residMid, 1) == layer(steered, .residMid, 1))
        #expect(layer(plain, .residPost, 0) == layer(steered, .residPost, 0))
        // resid_post of layer 1 moved by 8·v/‖v‖; layer 2 sees the steered residual.
        let moved = zip(layer(steered, .residPost, 1), layer(plain, .residPost, 1)).map { $0 - $1 }
        #expect(relativeError(moved, v.map { 8 * $0 / norm }) <= 1e-5)
        #expect(relativeError(layer(steered, .mlpOut, 2), layer(plain, .mlpOut, 2)) > 1e-3)
    }

    @Test("hook lists: names in order, unknown and repeated names refused with the option named")
    func parsing() throws {
        #expect(try Hook.parseList("resid_post,mlp_out") == [.residPost, .mlpOut])
        #expect(try Hook.parseList("attn_out, resid_pre") == [.attnOut, .residPre])
        func message(_ text: String) -> String {
            do { _ = try Hook.parseList(text); return "accepted" } catch { return error.localizedDescription }
        }
        #expect(message("resid_post,hook_mlp_out") == "--hooks: unknown hook 'hook_mlp_out' (known: resid_pre, attn_out, resid_mid, mlp_out, resid_post)")
        #expect(message("mlp_out,mlp_out") == "--hooks: hook 'mlp_out' is listed twice")
        #expect(message("").contains("unknown hook ''"))
        let m = try Fixtures.loadedModel("mha-f32")
        #expect(throws: ForwardError.self) { _ = try m.model.capture([1, 5], CaptureOptions(hooks: [.mlpOut, .mlpOut])) }
    }
}
