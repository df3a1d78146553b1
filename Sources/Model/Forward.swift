import Foundation
import Quant
import Formats

public enum Positions: String, Sendable, CaseIterable {
    /// Only the last token's residuals are needed (extraction).
    case last
    /// Every token's residuals.
    case all
}

/// A read point inside every block, by its TransformerLens name (`blocks.L.hook_NAME`). The cases are in
/// the order the forward pass reaches them.
///
/// - `resid_pre`: the residual entering block L (the embedding for L = 0, else resid_post of L − 1; HF: the
///   input of `model.layers[L]`).
/// - `attn_out`: the attention's output, o_proj's result (HF: `self_attn`'s output).
/// - `resid_mid`: the residual after attention, before the MLP (resid_pre + attn_out).
/// - `mlp_out`: the MLP's output, down_proj's result (HF: `mlp`'s output), before any steering.
/// - `resid_post`: the residual after block L, before the final norm, steering included (HF: `model.layers[L]`'s output).
///
/// resid_pre, resid_mid and resid_post are the residual stream itself at that moment. attn_out and mlp_out
/// are computed by a second o_proj/down_proj product into a separate buffer, only when requested: the
/// residual stream accumulates the projections in place (K-blocked), so adding a separately computed output
/// would round differently. The residual, the other hooks and the logits are therefore bit-identical
/// whichever hooks are read; the price is one more o_proj (attn_out) or down_proj (mlp_out) per block.
public enum Hook: String, Sendable, CaseIterable, Codable {
    case residPre = "resid_pre"
    case attnOut = "attn_out"
    case residMid = "resid_mid"
    case mlpOut = "mlp_out"
    case residPost = "resid_post"

    /// Hooks from a comma-separated list of names (`resid_post,mlp_out`), in the order given, without
    /// repeats; `what` names the option in the error.
    public static func parseList(_ text: String, what: String = "--hooks") throws -> [Hook] {
        var out: [Hook] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard let h = Hook(rawValue: name) else {
                throw ForwardError(reason: "\(what): unknown hook '\(name)' (known: \(allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard !out.contains(h) else { throw ForwardError(reason: "\(what): hook '\(name)' is listed twice") }
            out.append(h)
        }
        return out
    }
}

/// Where the forward pass lets a caller look at the residual stream (TransformerLens naming).
public enum ObservationPoint: Equatable, Sendable {
    /// `hook_embed`: the token embeddings, the residual before block 0 (HF hidden_states[0]).
    case embedding
    /// `blocks.L.hook_resid_pre`: the residual entering block L (see `Hook`).
    case residPre(layer: Int)
    /// `blocks.L.hook_attn_out`: o_proj's output in block L.
    case attnOut(layer: Int)
    /// `blocks.L.hook_resid_mid`: the residual after block L's attention, before its MLP.
    case residMid(layer: Int)
    /// `blocks.L.hook_mlp_out`: down_proj's output in block L (before steering).
    case mlpOut(layer: Int)
    /// `blocks.L.hook_resid_post`: the residual after block L, before the final norm.
    case residPost(layer: Int)

    public init(_ hook: Hook, layer: Int) {
        switch hook {
        case .residPre: self = .residPre(layer: layer)
        case .attnOut: self = .attnOut(layer: layer)
        case .residMid: self = .residMid(layer: layer)
        case .mlpOut: self = .mlpOut(layer: layer)
        case .residPost: self = .residPost(layer: layer)
        }
    }

    /// The block hook and layer, nil for the embedding.
    public var hook: (hook: Hook, layer: Int)? {
        switch self {
        case .embedding: return nil
        case .residPre(let l): return (.residPre, l)
        case .attnOut(let l): return (.attnOut, l)
        case .residMid(let l): return (.residMid, l)
        case .mlpOut(let l): return (.mlpOut, l)
        case .residPost(let l): return (.residPost, l)
        }
    }
}

/// A window onto residual rows: `count` consecutive positions starting at `firstPosition`, each `width`
/// floats, valid only during the observer call.
public struct ResidualRows {
    public let pointer: UnsafePointer<Float>
    public let firstPosition: Int
    public let count: Int
    public let width: Int
    public func row(position: Int) -> UnsafePointer<Float> { pointer + (position - firstPosition) * width }
}

public struct ForwardError: LocalizedError, Equatable {
    public let reason: String
    public var errorDescription: String? { reason }
}

/// Buffers of one forward pass for up to `capacity` tokens, allocated once and reused (nothing is
/// allocated inside the layer loop). Shapes: T = capacity, d = hidden, q = heads·head_dim,
/// kv = kv_heads·head_dim, f = intermediate.
public final class RunState {
    public let capacity: Int
    let x: FloatBuffer       // [T, d]  residual stream
    let xb: FloatBuffer      // [T, d]  RMS-normed residual, input of the projections
    let q: FloatBuffer       // [T, q]  queries (rotated)
    let k: FloatBuffer       // [T, kv] keys (rotated)
    let v: FloatBuffer       // [T, kv] values
    let att: FloatBuffer     // [T, q]  attention output, heads concatenated
    let hb: FloatBuffer      // [T, f]  gate, then silu(gate) * up
    let hb2: FloatBuffer     // [T, f]  up
    let scores: FloatBuffer  // [threads, T] one softmax row per thread
    let block: FloatBuffer   // [threads, attentionBlock, T] scores of a block of queries (long prompts, via sgemm)
    let cos: FloatBuffer     // [T, head_dim/2]
    let sin: FloatBuffer     // [T, head_dim/2]
    let invFreq: [Float]     // [head_dim/2]
    let logits: FloatBuffer  // [vocab]
    /// [T, d] o_proj or down_proj output for the attn_out/mlp_out hooks, allocated on first request
    /// (before a forward pass's layer loop, never inside it).
    private(set) var projection: FloatBuffer?

    func reserveProjection() -> UnsafeMutablePointer<Float> {
        if let p = projection { return p.pointer }
        let p = FloatBuffer(count: x.count)   // x is [capacity, d]
        projection = p
        return p.pointer
    }

    init(config c: LlamaConfig, invFreq: [Float], capacity: Int, threads: Int) {
        self.capacity = capacity
        let d = c.hiddenSize, half = c.headDimension / 2
        x = FloatBuffer(count: capacity * d)
        xb = FloatBuffer(count: capacity * d)
        q = FloatBuffer(count: capacity * c.qDim)
        k = FloatBuffer(count: capacity * c.kvDim)
        v = FloatBuffer(count: capacity * c.kvDim)
        att = FloatBuffer(count: capacity * c.qDim)
        hb = FloatBuffer(count: capacity * c.intermediateSize)
        hb2 = FloatBuffer(count: capacity * c.intermediateSize)
        scores = FloatBuffer(count: threads * capacity)
        block = FloatBuffer(count: capacity >= LlamaModel.blasAttentionMinTokens ? threads * LlamaModel.attentionBlock * capacity : 1)
        cos = FloatBuffer(count: capacity * half)
        sin = FloatBuffer(count: capacity * half)
        logits = FloatBuffer(count: c.vocabSize)
        // HF: inv_freq = 1 / theta ** (arange(0, dim, 2).float() / dim), in float32, with linear or llama3
        // rope scaling applied (LlamaWeights.ropeInverseFrequencies).
        self.invFreq = invFreq
    }
}

/// The LLaMA forward pass in f32 with an observation point after every block.
public final class LlamaModel {
    public let weights: LlamaWeights
    public let pool: ThreadPool
    /// Runs the projections (OpenBLAS for f32 weights, the selected int8 kernel for Q8_0).
    public let engine: GEMMEngine
    private var state: RunState?
    /// One forward pass at a time per model (the run state is shared).
    let lock = NSLock()

    public var config: LlamaConfig { weights.config }

    public init(weights: LlamaWeights, pool: ThreadPool, backend: Backend = .simd, kernel: Q8Kernel = .detected) {
        self.weights = weights
        self.pool = pool
        engine = GEMMEngine(pool: pool, backend: backend, kernel: kernel)
    }

    /// The run state for `tokens` positions: reused while large enough (allocation happens here, before a
    /// forward pass, never inside it).
    func runState(for tokens: Int) -> RunState {
        if let s = state, s.capacity >= tokens { return s }
        let cap = max(tokens, min(64, config.maxPositionEmbeddings))
        let s = RunState(config: config, invFreq: weights.ropeInverseFrequencies, capacity: cap, threads: pool.threadCount)
        let c = config
        engine.reserve(rows: cap, cols: max(c.hiddenSize, c.qDim, c.intermediateSize),
                       maxOut: max(c.qDim, c.intermediateSize, c.hiddenSize, c.vocabSize))
        state = s
        return s
    }

    /// Runs the prompt and calls `observe` with the residual rows at each observation point: every row
    /// for `.all`, only the last for `.last` (then the last block only computes the last row after
    /// attention, and nothing after the last block runs unless `logits` is set). The embedding is always
    /// observed; inside each block, the `hooks` in the pass's order (resid_pre, attn_out, resid_mid,
    /// mlp_out, resid_post; default resid_post only). Reading hooks changes no bit of any other hook or of
    /// the logits (see `Hook`).
    /// Returns the logits at the last position when `logits` is set.
    /// `steering` adds its vectors to the output of their blocks at every position (the write point, before
    /// the observation point: observers see the steered residual). With `cache` (empty, capacity ≥ the
    /// prompt), every layer's rotated keys and values are stored in it for `decode` (see `prefill`).
    @discardableResult
    public func forward(_ tokens: [Int32], positions: Positions = .last, logits wantLogits: Bool = false,
                        steering: Steering = .none, cache: KVCache? = nil, hooks: Set<Hook> = [.residPost],
                        observe: (ObservationPoint, ResidualRows) -> Void) throws -> [Float]? {
        lock.lock()
        defer { lock.unlock() }
        if let cache { try cache.checkPrefill(tokens.count, model: self) }
        let c = config, w = weights
        let T = tokens.count
        guard T > 0 else { throw ForwardError(reason: "empty token sequence") }
        guard T <= c.maxPositionEmbeddings else {
            throw ForwardError(reason: "the prompt has \(T) tokens, more than max_position_embeddings = \(c.maxPositionEmbeddings)")
        }
        if wantLogits && w.head == nil { throw ForwardError(reason: "logits requested but the output head was not loaded") }
        let d = c.hiddenSize
        let s = runState(for: T)
        let x = s.x.pointer, xb = s.xb.pointer

        // Token embeddings: x[t] = embedding[token t].
        for (t, id) in tokens.enumerated() {
            guard id >= 0 && Int(id) < c.vocabSize else {
                throw ForwardError(reason: "token id \(id) at position \(t) is outside the model's vocabulary (vocab_size \(c.vocabSize))")
            }
            w.embedding.copyRow(Int(id), into: x + t * d)
            // The embedding table of a GGUF file stays mapped and is not scanned on load: check the rows used,
            // so a damaged table is named as such (not blamed on layer 0).
            if ForwardOps.firstNonFinite(x + t * d, rows: 1, width: d) != nil {
                throw ForwardError(reason: "the embedding row of token id \(id) (position \(t)) is not finite (NaN/Inf): the token embedding table (token_embd.weight / model.embed_tokens.weight) is damaged")
            }
        }
        let allRows = 0..<T
        let lastRow = (T - 1)..<T
        func emit(_ point: ObservationPoint, _ rows: Range<Int>, from base: UnsafeMutablePointer<Float>? = nil) {
            let r = positions == .all ? allRows : lastRow
            precondition(rows.contains(r.lowerBound))
            observe(point, ResidualRows(pointer: (base ?? x) + r.lowerBound * d, firstPosition: r.lowerBound,
                                        count: r.count, width: d))
        }
        emit(.embedding, allRows)
        ropeTables(s, count: T)
        // attn_out and mlp_out: a second product into their own buffer (never the residual's arithmetic).
        let projection = hooks.contains(.attnOut) || hooks.contains(.mlpOut) ? s.reserveProjection() : nil

        for (l, layer) in w.layers.enumerated() {
            // Rows this block must produce: all, except in the last block when only the last is read.
            let isLast = l == w.layers.count - 1
            let rows = isLast && positions == .last ? lastRow : allRows
            if hooks.contains(.residPre) { emit(.residPre(layer: l), allRows) }

            // Attention: xb = rmsnorm(x); q,k,v = projections; rotate; attend; x += att · Woᵀ.
            let lo = rows.lowerBound, n = rows.count
            rmsnorm(xb, x, layer.attnNorm, rows: allRows, width: d, eps: c.epsF32)
            let xin = engine.prepare(xb, rows: T, cols: d)
            layer.wk.apply(xin, s.k.pointer, engine: engine)
            layer.wv.apply(xin, s.v.pointer, engine: engine)
            layer.wq.apply(xin.rows(rows), s.q.pointer + lo * c.qDim, engine: engine)
            if let b = layer.kBias { Self.addBias(b, to: s.k.pointer, rows: allRows) }
            if let b = layer.vBias { Self.addBias(b, to: s.v.pointer, rows: allRows) }
            if let b = layer.qBias { Self.addBias(b, to: s.q.pointer, rows: rows) }
            rotate(s.k.pointer, heads: c.kvHeads, rows: allRows, s)
            rotate(s.q.pointer, heads: c.numAttentionHeads, rows: rows, s)
            cache?.store(layer: l, keys: s.k.pointer, values: s.v.pointer, rows: T)
            let window = c.attentionWindow(layer: l)
            if T >= Self.blasAttentionMinTokens && rows.count > 1 { attentionBLAS(s, queries: rows, window: window) }
            else { attention(s, queries: rows, window: window) }
            let ain = engine.prepare(s.att.pointer + lo * c.qDim, rows: n, cols: c.qDim)
            layer.wo.apply(ain, x + lo * d, accumulate: true, engine: engine)
            if hooks.contains(.attnOut), let p = projection {
                layer.wo.apply(ain, p + lo * d, engine: engine)
                emit(.attnOut(layer: l), rows, from: p)
            }
            if hooks.contains(.residMid) { emit(.residMid(layer: l), rows) }

            // MLP: xb = rmsnorm(x); x += down(silu(gate(xb)) * up(xb)).
            rmsnorm(xb, x, layer.mlpNorm, rows: rows, width: d, eps: c.epsF32)
            let f = c.intermediateSize
            let min = engine.prepare(xb + lo * d, rows: n, cols: d)
            layer.gate.apply(min, s.hb.pointer + lo * f, engine: engine)
            layer.up.apply(min, s.hb2.pointer + lo * f, engine: engine)
            swiglu(s.hb.pointer + lo * f, s.hb2.pointer + lo * f, count: n * f)
            let hin = engine.prepare(s.hb.pointer + lo * f, rows: n, cols: f)
            layer.down.apply(hin, x + lo * d, accumulate: true, engine: engine)
            if hooks.contains(.mlpOut), let p = projection {
                layer.down.apply(hin, p + lo * d, engine: engine)
                emit(.mlpOut(layer: l), rows, from: p)
            }
            steering.apply(layer: l, to: x + lo * d, rows: n, width: d)

            if let bad = ForwardOps.firstNonFinite(x + rows.lowerBound * d, rows: rows.count, width: d) {
                throw ForwardError(reason: "the residual after layer \(l) is not finite at position \(rows.lowerBound + bad) (NaN/Inf); check the weights of layer \(l)")
            }
            if hooks.contains(.residPost) { emit(.residPost(layer: l), rows) }   // before the final norm
        }

        cache?.count = T
        guard wantLogits, let head = w.head else { return nil }
        // Logits at the last position: head(rmsnorm(x[T-1], final_norm)).
        rmsnorm(xb, x, w.finalNorm, rows: lastRow, width: d, eps: c.epsF32)
        head.apply(engine.prepare(xb + (T - 1) * d, rows: 1, cols: d), s.logits.pointer, engine: engine)
        return Array(UnsafeBufferPointer(start: s.logits.pointer, count: c.vocabSize))
    }

    // MARK: - Blocks (the per-row arithmetic is in Quant's ForwardOps)

    /// rows r of v ([*, bias.count] row-major) += bias (Qwen2's q/k/v biases, before RoPE). No allocation.
    static func addBias(_ bias: [Float], to v: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        bias.withUnsafeBufferPointer { b in
            let n = b.count
            for r in rows {
                let row = v + r * n
                for i in 0..<n { row[i] += b[i] }
            }
        }
    }

    /// out[r] = w ⊙ (x[r] / sqrt(mean(x[r]²) + eps)), as HF's LlamaRMSNorm in float32.
    func rmsnorm(_ out: UnsafeMutablePointer<Float>, _ x: UnsafeMutablePointer<Float>, _ weight: [Float],
                 rows: Range<Int>, width d: Int, eps: Float) {
        weight.withUnsafeBufferPointer { wp in
            let w = wp.baseAddress!
            pool.parallelRanges(rows.count, minChunk: max(1, 16384 / d)) { chunk in
                for r in chunk {
                    let row = (rows.lowerBound + r) * d
                    ForwardOps.rmsnormRow(out + row, x + row, w, d, eps: eps)
                }
            }
        }
    }

    /// cos/sin of position · inv_freq for every position and frequency (HF computes them in float32).
    func ropeTables(_ s: RunState, count: Int) {
        s.invFreq.withUnsafeBufferPointer { f in
            ForwardOps.ropeTables(cos: s.cos.pointer, sin: s.sin.pointer, invFreq: f.baseAddress!, half: f.count, count: count)
        }
    }

    /// Rotary embedding of each head's vector at each position, in the weights' layout.
    func rotate(_ v: UnsafeMutablePointer<Float>, heads: Int, rows: Range<Int>, _ s: RunState) {
        let hd = config.headDimension, half = hd / 2, width = heads * hd
        let interleaved = weights.ropeLayout == .interleaved
        for p in rows {
            for h in 0..<heads {
                ForwardOps.rotate(v + p * width + h * hd, cos: s.cos.pointer + p * half, sin: s.sin.pointer + p * half,
                                  half: half, interleaved: interleaved)
            }
        }
    }

    /// The first key query `i` attends to: 0, or with an attention window w the oldest of the last w
    /// positions (Hugging Face's sliding window: keys j with i - w < j ≤ i).
    @inline(__always)
    static func firstKey(_ i: Int, window: Int?) -> Int {
        guard let w = window else { return 0 }
        return max(0, i - w + 1)
    }

    /// Causal grouped-query attention for the query rows `queries` against keys firstKey...query.
    /// Query head h reads key/value head h / (heads / kv_heads).
    func attention(_ s: RunState, queries: Range<Int>, window: Int?) {
        let c = config
        let hd = c.headDimension, nh = c.numAttentionHeads, group = nh / c.kvHeads
        let qw = c.qDim, kw = c.kvDim, T = s.capacity
        let scale = Float(1 / Double(hd).squareRoot())
        let q = s.q.pointer, k = s.k.pointer, v = s.v.pointer, att = s.att.pointer, scratch = s.scores.pointer
        let chunk = 16
        let chunks = (queries.count + chunk - 1) / chunk
        pool.parallelFor(nh * chunks) { item, thread in
            let h = item % nh, ci = item / nh
            let kvh = h / group
            let lo = queries.lowerBound + ci * chunk, hi = min(queries.upperBound, lo + chunk)
            for i in lo..<hi {
                let j0 = Self.firstKey(i, window: window)
                ForwardOps.attendRow(query: q + i * qw + h * hd, keys: k + j0 * kw + kvh * hd, values: v + j0 * kw + kvh * hd,
                                     stride: kw, headDim: hd, keys: i + 1 - j0, scale: scale, scratch: scratch + thread * T,
                                     out: att + i * qw + h * hd)
            }
        }
    }

    /// Prompts at least this long compute attention scores with sgemm, a block of queries at a time.
    static let blasAttentionMinTokens = 256
    static let attentionBlock = 128

    /// Causal attention through OpenBLAS: for each head and each block of queries [q0, q1), the scores
    /// S = Q·Kᵀ·scale against keys k0..<q1 (k0 = 0, or the first key of q0's window) come from one sgemm,
    /// each row is masked (future keys, and keys before its own window) and softmaxed, and
    /// O = P·V is a second sgemm (the quadratic part at BLAS speed; same arithmetic as `attention`).
    /// Work items are (head, query block), each computed by one thread with single-threaded sgemm calls of
    /// a fixed shape: the result does not depend on the thread count.
    func attentionBLAS(_ s: RunState, queries: Range<Int>, window: Int?) {
        let c = config
        let hd = c.headDimension, nh = c.numAttentionHeads, group = nh / c.kvHeads
        let qw = c.qDim, kw = c.kvDim
        let scale = Float(1 / Double(hd).squareRoot())
        let scratch = s.block.pointer, perThread = Self.attentionBlock * s.capacity
        let blocks = (queries.count + Self.attentionBlock - 1) / Self.attentionBlock
        let q = s.q.pointer, k = s.k.pointer, v = s.v.pointer, att = s.att.pointer
        // Later query blocks attend to more keys: they go first, so the last items handed out are short.
        pool.parallelFor(nh * blocks) { item, thread in
            let h = item % nh, b = blocks - 1 - item / nh
            let kvh = h / group
            let q0 = queries.lowerBound + b * Self.attentionBlock
            let q1 = min(queries.upperBound, q0 + Self.attentionBlock)
            let k0 = Self.firstKey(q0, window: window)
            let m = q1 - q0, keys = q1 - k0
            let S = scratch + thread * perThread
            // S[m, keys] = Q[q0..<q1, h] · K[k0..<q1, kvh]ᵀ
            BLAS.gemm(transB: true, m: m, n: keys, k: hd, alpha: scale, a: q + q0 * qw + h * hd, lda: qw,
                      b: k + k0 * kw + kvh * hd, ldb: kw, beta: 0, c: S, ldc: keys)
            for i in 0..<m {
                ForwardOps.causalSoftmaxRow(S + i * keys, from: Self.firstKey(q0 + i, window: window) - k0,
                                            valid: q0 + i + 1 - k0, keys: keys)
            }
            // O[q0..<q1, h] = P[m, keys] · V[k0..<q1, kvh]
            BLAS.gemm(transB: false, m: m, n: hd, k: keys, alpha: 1, a: S, lda: keys,
                      b: v + k0 * kw + kvh * hd, ldb: kw, beta: 0, c: att + q0 * qw + h * hd, ldc: qw)
        }
    }

    /// a = silu(a) * b elementwise, silu(x) = x / (1 + e^-x).
    func swiglu(_ a: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>, count: Int) {
        pool.parallelRanges(count, minChunk: 16384) { r in
            ForwardOps.swiglu(a + r.lowerBound, b + r.lowerBound, count: r.count)
        }
    }
}
