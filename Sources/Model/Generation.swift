import Foundation
import Quant

/// How the next token is chosen from the logits.
public enum Sampling: Sendable, Equatable {
    /// The highest logit (the first on ties), as transformers' `generate(do_sample=False)`.
    case greedy
    /// Softmax of logits / temperature, restricted to the smallest set of most probable tokens whose
    /// probability reaches `topP` (nucleus; 1 = all), drawn with a generator seeded by `seed`: the same
    /// seed, model and prompt give the same tokens.
    case sample(temperature: Float, topP: Float, seed: UInt64)
}

/// A generated token with the gap between its logit and the best other token's (for greedy decoding, the
/// margin over the runner-up: a small one is where another implementation may legitimately differ).
public struct GeneratedToken: Sendable, Equatable {
    public let id: Int32
    public let margin: Float
}

/// Picks tokens from logits. Its buffers are allocated once (nothing is allocated per token).
public final class TokenPicker {
    public let sampling: Sampling
    private var rng: UInt64
    private let probs: FloatBuffer
    private let heap: UnsafeMutablePointer<Int32>
    private let vocab: Int

    public init(sampling: Sampling, vocabSize: Int) {
        self.sampling = sampling
        vocab = vocabSize
        probs = FloatBuffer(count: vocabSize)
        heap = .allocate(capacity: max(1, vocabSize))
        if case .sample(_, _, let seed) = sampling { rng = seed } else { rng = 0 }
    }

    deinit { heap.deallocate() }

    /// SplitMix64: a uniform double in [0, 1).
    private func uniform() -> Double {
        rng &+= 0x9E37_79B9_7F4A_7C15
        var z = rng
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    public func pick(_ logits: UnsafeBufferPointer<Float>) -> GeneratedToken {
        let n = min(vocab, logits.count)
        var best = 0
        for i in 1..<max(1, n) where logits[i] > logits[best] { best = i }
        let chosen: Int
        switch sampling {
        case .greedy:
            chosen = best
        case .sample(let temperature, let topP, _):
            chosen = sample(logits, n: n, best: best, temperature: temperature, topP: topP)
        }
        var other = -Float.infinity
        for i in 0..<n where i != chosen && logits[i] > other { other = logits[i] }
        return GeneratedToken(id: Int32(chosen), margin: n > 1 ? logits[chosen] - other : 0)
    }

    private func sample(_ logits: UnsafeBufferPointer<Float>, n: Int, best: Int, temperature: Float, topP: Float) -> Int {
        let p = probs.pointer, mx = logits[best]
        var sum: Double = 0
        for i in 0..<n {
            let e = expf((logits[i] - mx) / temperature)
            p[i] = e
            sum += Double(e)
        }
        if topP >= 1 {
            var u = uniform() * sum
            for i in 0..<n {
                u -= Double(p[i])
                if u < 0 { return i }
            }
            return best
        }
        // Nucleus: pop the most probable tokens from a max-heap until their mass reaches topP; draw among them.
        for i in 0..<n { heap[i] = Int32(i) }
        func less(_ a: Int32, _ b: Int32) -> Bool { p[Int(a)] < p[Int(b)] || (p[Int(a)] == p[Int(b)] && a > b) }
        func siftDown(_ start: Int, _ count: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < count && less(heap[m], heap[l]) { m = l }
                if r < count && less(heap[m], heap[r]) { m = r }
                if m == i { return }
                let t = heap[i]; heap[i] = heap[m]; heap[m] = t
                i = m
            }
        }
        for i in stride(from: n / 2 - 1, through: 0, by: -1) { siftDown(i, n) }
        var size = n, mass: Double = 0
        let target = Double(topP) * sum
        // Popped tokens go to the end of the array, most probable at n - 1.
        while size > 0 && (mass < target || size == n) {
            mass += Double(p[Int(heap[0])])
            size -= 1
            let t = heap[0]; heap[0] = heap[size]; heap[size] = t
            siftDown(0, size)
        }
        var u = uniform() * mass
        for j in stride(from: n - 1, through: size, by: -1) {
            u -= Double(p[Int(heap[j])])
            if u < 0 { return Int(heap[j]) }
        }
        return Int(heap[n - 1])
    }
}

extension LlamaModel {
    /// Generates up to `maxNewTokens` tokens after `prompt`: prefill through the batched forward pass, then one
    /// token per step against the KV cache. Stops before a token in `stop` (not returned) or when the context
    /// (max_position_embeddings) is full. `onToken` sees each token as it is chosen (for streaming); it may
    /// throw to stop. `cache` is reused when large enough (a new one is made otherwise).
    public func generate(_ prompt: [Int32], maxNewTokens: Int, stop: Set<Int32> = [], sampling: Sampling = .greedy,
                         steering: Steering = .none, cache: KVCache? = nil,
                         onToken: (GeneratedToken) throws -> Void = { _ in }) throws -> [GeneratedToken] {
        guard maxNewTokens > 0 else { return [] }
        let c = config
        guard prompt.count <= c.maxPositionEmbeddings else {
            throw ForwardError(reason: "the prompt has \(prompt.count) tokens, more than max_position_embeddings = \(c.maxPositionEmbeddings)")
        }
        // The last generated token is never run: the cache needs prompt + maxNewTokens - 1 positions (at most
        // the context; maxNewTokens may be anything a user typed).
        let needed = min(c.maxPositionEmbeddings, prompt.count + min(maxNewTokens, c.maxPositionEmbeddings) - 1)
        let kv = try cache.flatMap { $0.capacity >= needed ? $0 : nil } ?? makeCache(capacity: needed)
        kv.reset()
        let picker = TokenPicker(sampling: sampling, vocabSize: c.vocabSize)
        var out: [GeneratedToken] = []
        out.reserveCapacity(min(maxNewTokens, needed - prompt.count + 1))
        let first = try prefill(prompt, cache: kv, steering: steering)
        var next = first.withUnsafeBufferPointer { picker.pick($0) }
        while true {
            if stop.contains(next.id) { break }
            out.append(next)
            try onToken(next)
            if out.count == maxNewTokens || kv.count == kv.capacity { break }
            next = picker.pick(try decode(next.id, cache: kv, steering: steering))
        }
        return out
    }
}
