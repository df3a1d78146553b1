import Foundation
import Quant
import Formats

/// Every layer's rotated keys and values for up to `capacity` positions ([layers, capacity, kv_dim] each),
/// with the rotary tables of those positions and the attention scratch of one decoding step. Allocated
/// once (`LlamaModel.makeCache`); prefill fills positions 0..<T, each `decode` step appends one.
public final class KVCache {
    public let capacity: Int
    /// Positions filled so far (the next token's position).
    public internal(set) var count = 0
    let layers: Int
    let kvDim: Int
    let half: Int
    let keys: FloatBuffer     // [layers, capacity, kv]
    let values: FloatBuffer   // [layers, capacity, kv]
    let cos: FloatBuffer      // [capacity, head_dim/2]
    let sin: FloatBuffer      // [capacity, head_dim/2]
    let scores: FloatBuffer   // [threads, capacity] one softmax row per thread
    /// The last step's logits [vocab]: per cache, so that another thread's forward pass on the same model
    /// (which reuses the model's run state) cannot overwrite them before they are read.
    let logits: FloatBuffer
    /// The model the cache was made for (a cache holds that model's keys only).
    weak var owner: LlamaModel?

    init(model: LlamaModel, capacity: Int, invFreq: [Float]) {
        let c = model.config
        self.capacity = capacity
        layers = c.numHiddenLayers
        kvDim = c.kvDim
        half = c.headDimension / 2
        keys = FloatBuffer(count: layers * capacity * kvDim)
        values = FloatBuffer(count: layers * capacity * kvDim)
        cos = FloatBuffer(count: capacity * half)
        sin = FloatBuffer(count: capacity * half)
        scores = FloatBuffer(count: model.pool.threadCount * capacity)
        logits = FloatBuffer(count: c.vocabSize)
        owner = model
        invFreq.withUnsafeBufferPointer { f in
            ForwardOps.ropeTables(cos: cos.pointer, sin: sin.pointer, invFreq: f.baseAddress!, half: half, count: capacity)
        }
    }

    /// Forgets the cached positions (the buffers are kept for the next prompt).
    public func reset() { count = 0 }

    func keys(layer l: Int) -> UnsafeMutablePointer<Float> { keys.pointer + l * capacity * kvDim }
    func values(layer l: Int) -> UnsafeMutablePointer<Float> { values.pointer + l * capacity * kvDim }

    /// Copies a prefill's rotated keys and values of layer `l` (rows 0..<rows).
    func store(layer l: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, rows: Int) {
        keys(layer: l).update(from: k, count: rows * kvDim)
        values(layer: l).update(from: v, count: rows * kvDim)
    }

    func checkPrefill(_ tokens: Int, model: LlamaModel) throws {
        guard owner === model else { throw ForwardError(reason: "the KV cache belongs to another model") }
        guard count == 0 else { throw ForwardError(reason: "the KV cache already holds \(count) positions; reset it before a new prompt") }
        guard tokens <= capacity else {
            throw ForwardError(reason: "the prompt has \(tokens) tokens, more than the KV cache's \(capacity) positions")
        }
    }

    /// Bytes of keys and values.
    public var byteCount: Int { 2 * layers * capacity * kvDim * 4 }
}

extension LlamaModel {
    /// A KV cache for `capacity` positions (at most max_position_embeddings). Allocates; do it before decoding.
    public func makeCache(capacity: Int) throws -> KVCache {
        let c = config
        guard capacity >= 1 && capacity <= c.maxPositionEmbeddings else {
            throw ForwardError(reason: "a KV cache of \(capacity) positions: must be 1...max_position_embeddings (\(c.maxPositionEmbeddings))")
        }
        lock.lock()
        defer { lock.unlock() }
        let s = runState(for: 1)
        return KVCache(model: self, capacity: capacity, invFreq: s.invFreq)
    }

    /// Runs the prompt through the batched forward pass, storing every layer's keys and values in `cache`
    /// (which must be empty), and returns the logits at the last position.
    public func prefill(_ tokens: [Int32], cache: KVCache, steering: Steering = .none,
                        observe: (ObservationPoint, ResidualRows) -> Void = { _, _ in }) throws -> [Float] {
        guard let logits = try forward(tokens, positions: .last, logits: true, steering: steering, cache: cache, observe: observe) else {
            throw ForwardError(reason: "logits requested but the output head was not loaded")
        }
        return logits
    }

    /// One decoding step: runs `token` at position `cache.count` against the cached keys and values (nothing
    /// is recomputed), appends its keys and values, and returns the logits, held by the cache and valid until
    /// its next step (other threads may use the model meanwhile). Its own buffers are all preallocated (run state, cache, engine scratch); the only allocations
    /// left are the thread pool's, one 32-byte box per parallel dispatch (`withoutActuallyEscaping` in
    /// `ThreadPool.parallelFor`), none with one thread. `observe` sees the one-row residual after each block (steered).
    public func decode(_ token: Int32, cache: KVCache, steering: Steering = .none,
                       observe: (ObservationPoint, ResidualRows) -> Void = { _, _ in }) throws -> UnsafeBufferPointer<Float> {
        lock.lock()
        defer { lock.unlock() }
        let c = config, w = weights
        guard cache.owner === self else { throw ForwardError(reason: "the KV cache belongs to another model") }
        let p = cache.count
        guard p < cache.capacity else {
            throw ForwardError(reason: "the KV cache is full (\(cache.capacity) positions); make a larger one")
        }
        guard let head = w.head else { throw ForwardError(reason: "logits requested but the output head was not loaded") }
        guard token >= 0 && Int(token) < c.vocabSize else {
            throw ForwardError(reason: "token id \(token) at position \(p) is outside the model's vocabulary (vocab_size \(c.vocabSize))")
        }
        let d = c.hiddenSize, hd = c.headDimension, half = hd / 2, nh = c.numAttentionHeads, group = nh / c.kvHeads
        let qw = c.qDim, kw = c.kvDim, f = c.intermediateSize, cap = cache.capacity
        let s = runState(for: 1)
        let x = s.x.pointer, xb = s.xb.pointer, q = s.q.pointer, att = s.att.pointer
        let hb = s.hb.pointer, hb2 = s.hb2.pointer
        let cs = cache.cos.pointer + p * half, sn = cache.sin.pointer + p * half
        let interleaved = w.ropeLayout == .interleaved
        let scale = Float(1 / Double(hd).squareRoot())
        let eps = c.epsF32
        let scratch = cache.scores.pointer

        w.embedding.copyRow(Int(token), into: x)
        if ForwardOps.firstNonFinite(x, rows: 1, width: d) != nil {
            throw ForwardError(reason: "the embedding row of token id \(token) (position \(p)) is not finite (NaN/Inf): the token embedding table (token_embd.weight / model.embed_tokens.weight) is damaged")
        }
        observe(.embedding, ResidualRows(pointer: x, firstPosition: p, count: 1, width: d))

        for (l, layer) in w.layers.enumerated() {
            let kc = cache.keys(layer: l), vc = cache.values(layer: l)
            let kRow = kc + p * kw, vRow = vc + p * kw
            layer.attnNorm.withUnsafeBufferPointer { ForwardOps.rmsnormRow(xb, x, $0.baseAddress!, d, eps: eps) }
            let xin = engine.prepare(xb, rows: 1, cols: d)
            layer.wk.apply(xin, kRow, engine: engine)
            layer.wv.apply(xin, vRow, engine: engine)
            layer.wq.apply(xin, q, engine: engine)
            if let b = layer.kBias { Self.addBias(b, to: kRow, rows: 0..<1) }
            if let b = layer.vBias { Self.addBias(b, to: vRow, rows: 0..<1) }
            if let b = layer.qBias { Self.addBias(b, to: q, rows: 0..<1) }
            for h in 0..<c.kvHeads { ForwardOps.rotate(kRow + h * hd, cos: cs, sin: sn, half: half, interleaved: interleaved) }
            for h in 0..<nh { ForwardOps.rotate(q + h * hd, cos: cs, sin: sn, half: half, interleaved: interleaved) }
            // One head per work item, each on one thread: the result does not depend on the thread count.
            let j0 = Self.firstKey(p, window: c.attentionWindow(layer: l))
            pool.parallelFor(nh) { h, thread in
                let kvh = h / group
                ForwardOps.attendRow(query: q + h * hd, keys: kc + j0 * kw + kvh * hd, values: vc + j0 * kw + kvh * hd,
                                     stride: kw, headDim: hd, keys: p + 1 - j0, scale: scale, scratch: scratch + thread * cap,
                                     out: att + h * hd)
            }
            layer.wo.apply(engine.prepare(att, rows: 1, cols: qw), x, accumulate: true, engine: engine)

            layer.mlpNorm.withUnsafeBufferPointer { ForwardOps.rmsnormRow(xb, x, $0.baseAddress!, d, eps: eps) }
            let min = engine.prepare(xb, rows: 1, cols: d)
            layer.gate.apply(min, hb, engine: engine)
            layer.up.apply(min, hb2, engine: engine)
            ForwardOps.swiglu(hb, hb2, count: f)
            layer.down.apply(engine.prepare(hb, rows: 1, cols: f), x, accumulate: true, engine: engine)
            steering.apply(layer: l, to: x, rows: 1, width: d)

            if ForwardOps.firstNonFinite(x, rows: 1, width: d) != nil {
                throw ForwardError(reason: "the residual after layer \(l) is not finite at position \(p) (NaN/Inf); check the weights of layer \(l)")
            }
            observe(.residPost(layer: l), ResidualRows(pointer: x, firstPosition: p, count: 1, width: d))
        }
        cache.count = p + 1
        w.finalNorm.withUnsafeBufferPointer { ForwardOps.rmsnormRow(xb, x, $0.baseAddress!, d, eps: eps) }
        head.apply(engine.prepare(xb, rows: 1, cols: d), cache.logits.pointer, engine: engine)
        return UnsafeBufferPointer(start: cache.logits.pointer, count: c.vocabSize)
    }
}
