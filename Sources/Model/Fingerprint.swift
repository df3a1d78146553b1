import Foundation
import Quant
import Formats

extension LlamaWeights {
    /// The checkpoint's identity from every weight that shapes the residual stream:
    /// `weights-v2:<64 hex>`, a SHA-256 over the configuration's sizes (float parameters as float32 bits),
    /// the RMS norm weights in f32 (exact in every storage type), and each matrix — the token embeddings and
    /// every layer's seven projections — in one canonical form: Q8_0 rows (ggml's rounding) in Hugging Face's
    /// row order (Q/K rows of GGUF's interleaved rotary layout are put back), digested in groups of 256 rows
    /// with `ContentHash`; matrices whose rows are not a multiple of 32 long as f16 rows (GGUF keeps those in F16).
    ///
    /// So the same checkpoint as an HF f32/bf16 directory and as the Q8_0 GGUF quantized from it agree (the
    /// GGUF holds exactly the Q8_0 rows the directory's weights round to), while any two checkpoints whose
    /// weights differ by more than Q8_0's rounding differ — another seed, a fine-tune, a merged LoRA that
    /// only touches the projections. A change smaller than half a Q8_0 step in every weight is invisible to
    /// a Q8_0 model and to this fingerprint alike. The output head is not included: residuals do not depend
    /// on it. Computed at load on the model's thread pool (seconds for 13B); independent of the thread count.
    public func fingerprint(pool: ThreadPool) -> String {
        let c = config
        var h = SHA256()
        let head = "llamaprobe-weights-fingerprint-v2 layers=\(c.numHiddenLayers) d_model=\(c.hiddenSize) d_ff=\(c.intermediateSize) "
            + "heads=\(c.numAttentionHeads) kv_heads=\(c.kvHeads) head_dim=\(c.headDimension) vocab=\(c.vocabSize) "
            + "theta=\(Float(c.theta).bitPattern) eps=\(c.epsF32.bitPattern) "
            + "rope_linear=\(c.linearRopeFactor.map { String(Float($0).bitPattern) } ?? "none") tied=\(c.tiedEmbeddings)\n"
            + ((ropeFreqFactors ?? c.llama3RopeFactors).map { "rope_freqs=\($0.map { String($0.bitPattern) }.joined(separator: ","))\n" } ?? "")
        h.update(Array(head.utf8))
        func add(_ v: [Float]) { v.withUnsafeBytes { h.update($0) } }
        func addMatrix(_ name: String, _ m: CanonicalRows) {
            h.update(Array("\(name) \(m.rows)x\(m.cols) \(m.q8 ? "q8_0" : "f16")\n".utf8))
            h.update(m.digests(pool: pool))
        }
        addMatrix("token_embd", CanonicalRows(embedding))
        for (l, w) in layers.enumerated() {
            add(w.attnNorm); add(w.mlpNorm)
            let qHeads = ropeLayout == .interleaved ? c.numAttentionHeads : nil
            let kHeads = ropeLayout == .interleaved ? c.kvHeads : nil
            for (name, m, heads) in [("wq", w.wq, qHeads), ("wk", w.wk, kHeads), ("wv", w.wv, nil), ("wo", w.wo, nil),
                                     ("gate", w.gate, nil), ("up", w.up, nil), ("down", w.down, nil)] {
                addMatrix("blk.\(l).\(name)", CanonicalRows(m, interleavedHeads: heads))
            }
            for b in [w.qBias, w.kBias, w.vBias] { if let b { add(b) } }   // Qwen2 (rotate-half layout in both formats)
        }
        add(finalNorm)
        return ModelIdentity.fingerprintPrefix + h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// How the projections are stored ("Q8_0", "F32", "F16", or a "+"-joined mix).
    public var projectionStorage: String {
        var seen: [String] = []
        for l in layers {
            for w in l.projections where !seen.contains(w.storage) { seen.append(w.storage) }
        }
        return seen.joined(separator: "+")
    }
}

/// A matrix seen through the fingerprint's canonical form: row `r` in HF order, as Q8_0 bytes when its length
/// is a multiple of 32, else as f16 (what llama.cpp and `quantize` store such rows in).
struct CanonicalRows {
    let rows: Int, cols: Int
    let q8: Bool
    /// Writes canonical row r to dst (rowBytes bytes), using `scratch` (cols floats) when it must convert.
    let row: (_ r: Int, _ dst: UnsafeMutableRawPointer, _ scratch: UnsafeMutablePointer<Float>) -> Void
    var rowBytes: Int { q8 ? cols / Q8_0.blockSize * Q8_0.blockBytes : cols * 2 }
    static let rowsPerUnit = 256

    init(rows: Int, cols: Int, row: @escaping (Int, UnsafeMutableRawPointer, UnsafeMutablePointer<Float>) -> Void) {
        self.rows = rows; self.cols = cols; q8 = cols % Q8_0.blockSize == 0; self.row = row
    }

    init(_ e: EmbeddingTable) {
        let q8 = e.cols % Q8_0.blockSize == 0
        self.init(rows: e.rows, cols: e.cols) { r, dst, f in
            if q8 && e.type.id == .q8_0 {
                dst.copyMemory(from: e.data + r * e.rowBytes, byteCount: e.rowBytes)
            } else {
                e.copyRow(r, into: f)
                (q8 ? QuantType.q8_0 : QuantType.f16).fromFloat(f, dst, e.cols)
            }
        }
    }

    /// `interleavedHeads`: the matrix holds Q/K rows in GGUF's interleaved rotary order for that many heads;
    /// HF row s (= head h, index j) is stored row h·hd + 2j (j < hd/2) or h·hd + 2(j − hd/2) + 1.
    init(_ l: Linear, interleavedHeads: Int?) {
        let rows = l.outFeatures, cols = l.inFeatures
        let stored: (Int) -> Int
        if let heads = interleavedHeads, heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 {
            let hd = rows / heads, half = hd / 2
            stored = { s in let hh = s / hd, j = s % hd; return hh * hd + (j < half ? 2 * j : 2 * (j - half) + 1) }
        } else {
            stored = { $0 }
        }
        let q8 = cols % Q8_0.blockSize == 0
        switch l {
        case .q8_0(let p):
            self.init(rows: rows, cols: cols) { r, dst, _ in p.copyRowQ8_0(stored(r), into: dst) }
        case .f32(let m):
            self.init(rows: rows, cols: cols) { r, dst, _ in
                let src = m.row(stored(r))
                (q8 ? QuantType.q8_0 : QuantType.f16).fromFloat(src, dst, cols)
            }
        }
    }

    /// One ContentHash digest per group of 256 rows, in order (the partition is the shape's, not the pool's).
    func digests(pool: ThreadPool) -> [UInt8] {
        let units = (rows + Self.rowsPerUnit - 1) / Self.rowsPerUnit
        let unitBytes = Self.rowsPerUnit * rowBytes
        let threads = pool.threadCount
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, threads * unitBytes), alignment: 64)
        let floats = UnsafeMutablePointer<Float>.allocate(capacity: max(1, threads * cols))
        defer { buffer.deallocate(); floats.deallocate() }
        return ContentHash.digests(units: units, pool: pool) { u, t in
            let dst = buffer + t * unitBytes, f = floats + t * cols
            let first = u * Self.rowsPerUnit, n = min(Self.rowsPerUnit, rows - first)
            for i in 0..<n { row(first + i, dst + i * rowBytes, f) }
            return (UnsafeRawPointer(dst), n * rowBytes)
        }
    }
}
