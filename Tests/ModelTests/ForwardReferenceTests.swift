import Foundation
import Model
import Quant
import Formats
import Testing

/// The f32 forward pass against Hugging Face transformers (float32, eager attention) on the fixture models:
/// residuals at max|Δ|/max|ref| ≤ 1e-4 per prompt, token ids exactly.
@Suite struct ForwardReferenceTests {
    static let tolerance: Float = 1e-4

    @Test("resid_post, embeddings and logits at the last token match HF", arguments: Fixtures.models)
    func lastToken(model name: String) throws {
        let m = try Fixtures.loadedModel(name)
        let ref = try SafeTensorsFile(path: Fixtures.reference(name))
        var worst: Float = 0
        defer { print("\(name): worst resid_post rel error over \(Fixtures.cases.count) prompts: \(worst)") }
        for (i, c) in Fixtures.cases.enumerated() {
            let ids = try m.tokenizer.encode(try c.render())
            #expect(ids == c.ids, "tokens of case \(c.name)")
            #expect(try ref.integers("p\(i).tokens").map(Int32.init) == ids)
            let r = try m.model.capture(ids, CaptureOptions(positions: .last, embeddings: true, logits: true))
            let e1 = relativeError(r.residPost, try ref.floats("p\(i).resid_post"))
            let e2 = relativeError(r.embedding!, try ref.floats("p\(i).embed"))
            let e3 = relativeError(r.logitsLast!, try ref.floats("p\(i).logits_last"))
            worst = max(worst, e1)
            #expect(e1 <= Self.tolerance, "\(name) \(c.name) (\(ids.count) tokens): resid_post rel error \(e1)")
            #expect(e2 <= Self.tolerance, "\(name) \(c.name): embed rel error \(e2)")
            #expect(e3 <= Self.tolerance, "\(name) \(c.name): logits rel error \(e3)")
        }
    }

    @Test("resid_post at every position matches HF", arguments: Fixtures.models)
    func allPositions(model name: String) throws {
        let m = try Fixtures.loadedModel(name)
        let ref = try SafeTensorsFile(path: Fixtures.reference(name))
        var checked = 0
        for (i, c) in Fixtures.cases.enumerated() where ref.tensors["p\(i).resid_post_all"] != nil {
            let r = try m.model.capture(c.ids, CaptureOptions(positions: .all, embeddings: true))
            let e1 = relativeError(r.residPost, try ref.floats("p\(i).resid_post_all"))
            let e2 = relativeError(r.embedding!, try ref.floats("p\(i).embed_all"))
            #expect(e1 <= Self.tolerance, "\(name) \(c.name): resid_post (all positions) rel error \(e1)")
            #expect(e2 <= Self.tolerance, "\(name) \(c.name): embed (all positions) rel error \(e2)")
            checked += 1
        }
        #expect(checked >= 5)
    }

    @Test("the last layer's resid_post is not HF's normed last hidden state", arguments: Fixtures.models)
    func lastLayerIsNotNormed(model name: String) throws {
        let m = try Fixtures.loadedModel(name)
        let ref = try SafeTensorsFile(path: Fixtures.reference(name))
        let c = m.config, d = c.hiddenSize, L = c.numHiddenLayers
        let i = Fixtures.cases.firstIndex { $0.name == "chat_default" }!
        let r = try m.model.capture(Fixtures.cases[i].ids, CaptureOptions())
        let last = Array(r.residPost[((L - 1) * d)..<(L * d)])
        let normedRef = try ref.floats("p\(i).final_normed_last")
        #expect(relativeError(last, normedRef) > 1e-2)
        // ...and applying the final norm to it gives HF's value.
        let ss = last.reduce(Float(0)) { $0 + $1 * $1 }
        let inv = 1 / (ss / Float(d) + c.epsF32).squareRoot()
        let normed = zip(last, m.model.weights.finalNorm).map { $1 * ($0 * inv) }
        #expect(relativeError(normed, normedRef) <= Self.tolerance)
    }

    /// The fixtures are sensitive: each plausible mistake moves the result by far more than the tolerance.
    @Test("a wrong RoPE layout, theta or eps is detected")
    func mistakesAreDetected() throws {
        let name = "gqa-f16-theta"
        let ck = try HFCheckpoint(directory: Fixtures.model(name))
        let pool = ThreadPool(threads: 2)
        let ref = try SafeTensorsFile(path: Fixtures.reference(name))
        let i = Fixtures.cases.firstIndex { $0.name == "chat_default" }!
        let expected = try ref.floats("p\(i).resid_post")
        func mutatedError(_ mutate: (inout LlamaWeights) -> Void) throws -> Float {
            var w = try ck.loadWeights(includeHead: false, pool: pool)
            mutate(&w)
            let r = try LlamaModel(weights: w, pool: pool).capture(Fixtures.cases[i].ids, CaptureOptions())
            return relativeError(r.residPost, expected)
        }
        #expect(try mutatedError { _ in } <= Self.tolerance)
        #expect(try mutatedError { $0.ropeLayout = .interleaved } > 1e-2)
        #expect(try mutatedError { $0.config.ropeTheta = 10000 } > 1e-2)
        #expect(try mutatedError { $0.config.rmsNormEps = 1e-5 } > 1e-2)
        #expect(try mutatedError { w in
            for l in w.layers.indices { let g = w.layers[l].gate; w.layers[l].gate = w.layers[l].up; w.layers[l].up = g }
        } > 1e-2)
    }
}
