import Foundation
#if arch(x86_64)
import KernelsAVX2
import KernelsAVX512
#endif

/// Which implementation runs the int8 projections (`--backend`).
public enum Backend: String, Sendable, CaseIterable {
    /// Our Swift SIMD kernels (the best one this CPU supports; see `Q8Kernel`).
    case simd
    /// OpenBLAS sgemm on weight tiles dequantized to f32 (fallback for any CPU or shape).
    case blas
}

/// The int8 compute paths: **the place where the activation precision is chosen.**
///
/// - `avx512vnni-a16` (W8A16, the default on CPUs with AVX-512 VNNI): activations are quantized to 16
///   bits per block of 32 and split into two bytes, each multiplied with the int8 weights by `vpdpbusd`.
///   Fidelity is that of the weights alone (activation rounding is ~2⁻¹⁶ relative); speed about twice
///   OpenBLAS sgemm.
/// - `avx512vnni-a8` (W8A8, opt-in): activations quantized to 8 bits per block of 32 exactly as llama.cpp
///   quantizes them for Q8_0 (d = max|x|/127), one `vpdpbusd` per weight: about four times sgemm, with
///   the activation rounding error llama.cpp has.
/// - `avx2-a16` (W8A16, the default on CPUs with AVX2 but no AVX-512 VNNI): activations quantized to 16 bits
///   per block of 32 as for avx512vnni-a16, a panel of weights widened to int16 once per tile and reused for
///   every prompt row, products summed by `vpmaddwd`: the fidelity of the weights alone, faster than f32 FMA.
/// - `avx2` (W8A32, CPUs with AVX2 + FMA): a panel of weights is dequantized once per tile and reused for
///   every prompt row by an f32 FMA micro-kernel; about sgemm speed.
/// - `portable`: no usable SIMD kernel: the `blas` path (W8A32).
/// docs/performance.md has the measured speed and fidelity of each.
public enum Q8Kernel: String, Sendable, CaseIterable {
    case avx512vnniA16 = "avx512vnni-a16"
    case avx512vnniA8 = "avx512vnni-a8"
    case avx2A16 = "avx2-a16"
    case avx2
    case portable

    /// The best kernel for this CPU (W8A8 is never chosen automatically);
    /// `LLAMAPROBE_KERNEL=<raw value>` forces one if this CPU supports it.
    public static let detected: Q8Kernel = {
        if let forced = ProcessInfo.processInfo.environment["LLAMAPROBE_KERNEL"].flatMap(Q8Kernel.init(rawValue:)),
           supported.contains(forced) {
            return forced
        }
        return supported.first { $0 != .avx512vnniA8 }!
    }()

    /// Kernels this CPU can run, best first.
    public static let supported: [Q8Kernel] = {
        var out: [Q8Kernel] = []
        #if arch(x86_64)
        let flags = cpuFlags()
        if ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni"].allSatisfy(flags.contains) {
            out += [.avx512vnniA16, .avx512vnniA8]
        }
        if ["avx2", "fma", "f16c"].allSatisfy(flags.contains) { out += [.avx2A16, .avx2] }
        #endif
        out.append(.portable)
        return out
    }()

    /// What it computes, for logs and benchmark output.
    public var summary: String {
        switch self {
        case .avx512vnniA16: return "avx512vnni-a16 (W8A16: 16-bit activations per 32, 2× vpdpbusd)"
        case .avx512vnniA8: return "avx512vnni-a8 (W8A8: 8-bit activations per 32 as llama.cpp, vpdpbusd)"
        case .avx2A16: return "avx2-a16 (W8A16: 16-bit activations per 32, int16 weight panels, vpmaddwd)"
        case .avx2: return "avx2 (W8A32: dequantized weight panels, f32 FMA)"
        case .portable: return "blas (W8A32: OpenBLAS sgemm on dequantized tiles)"
        }
    }

    static func cpuFlags() -> Set<String> {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }
}

/// An input matrix x [rows, cols] (row stride ldx) prepared for the projections that read it. For the
/// W8A8 kernel it is quantized once (on first use) and shared by every projection of the same input.
public struct PreparedInput {
    public let x: UnsafePointer<Float>
    public let ldx: Int
    public let rows: Int
    public let cols: Int
    let rowOffset: Int
    let generation: Int

    /// The rows `r` of this input (e.g. only the last position).
    public func rows(_ r: Range<Int>) -> PreparedInput {
        PreparedInput(x: x + r.lowerBound * ldx, ldx: ldx, rows: r.count, cols: cols,
                      rowOffset: rowOffset + r.lowerBound, generation: generation)
    }
}

/// Runs projections: f32 weights through OpenBLAS, int8 weights through the selected kernel. Owns every
/// scratch buffer, sized once by `reserve` (nothing is allocated per call).
public final class GEMMEngine: @unchecked Sendable {
    public let pool: ThreadPool
    public let backend: Backend
    public let kernel: Q8Kernel

    // Quantized activations of the current prepared input: q [rows, cols] int8 (W8A16: the high bytes,
    // qlo the low bytes), per-block scale and correction term.
    private var qx: UnsafeMutablePointer<Int8>?
    private var qlo: UnsafeMutablePointer<Int8>?
    private var qscale: UnsafeMutablePointer<Float>?
    private var qsum: UnsafeMutablePointer<Int32>?
    // AVX2 W8A16: activations as int16 [rows, cols]; per thread one widened panel chunk (int16 pairs, then f32 scales).
    private var qx16: UnsafeMutablePointer<Int16>?
    private var widened: UnsafeMutableRawPointer?
    private var capacityRows = 0, capacityCols = 0
    // AVX2: one dequantized panel chunk per thread [avx2Depth][16]. BLAS: one dequantized weight tile per thread.
    private var panelScratch: FloatBuffer?
    private var tile: FloatBuffer?
    private var generation = 0
    private var quantizedGeneration = -1
    private var prepared: PreparedInput?

    static let vnniBlocksPerChunk = 32     // 1024 inputs: a panel pair chunk (35 KB) stays in L1
    static let avx2Depth = 256             // inputs per dequantized panel chunk (16 KB; widened to int16: 8 KB)
    static let widenedBytes = avx2Depth * 16 * 2 + avx2Depth / 32 * 16 * 4
    /// Weight rows per work item of the `blas` path (dequantized into the thread's tile).
    static let blasTileRows = 64
    /// Prompt rows per work item (the AVX2 kernel's 6-row tiles fit 252 of them exactly).
    static let rowBlock = 252

    public init(pool: ThreadPool, backend: Backend = .simd, kernel: Q8Kernel = .detected) {
        self.pool = pool
        self.backend = backend
        self.kernel = backend == .blas ? .portable : kernel
    }

    deinit {
        qx?.deallocate(); qlo?.deallocate(); qscale?.deallocate(); qsum?.deallocate(); qx16?.deallocate(); widened?.deallocate()
    }

    /// Kernels that quantize the prepared input once and share it across the projections that read it.
    private var quantizesActivations: Bool { kernel == .avx512vnniA8 || kernel == .avx512vnniA16 || kernel == .avx2A16 }

    /// The whole prepared input that `input` (possibly a subset of its rows) belongs to, with buffers reserved.
    private func preparedBase(of input: PreparedInput, maxOut: Int) -> PreparedInput {
        let base = prepared!
        precondition(base.generation == input.generation, "input is not the prepared one")
        reserve(rows: base.rows, cols: base.cols, maxOut: maxOut)
        return base
    }

    /// Runs `quantize(rows)` over the prepared input's rows in parallel, once per prepared input.
    private func quantizeOnce(_ base: PreparedInput, _ quantize: (Range<Int>) -> Void) {
        if quantizedGeneration == base.generation { return }
        pool.parallelRanges(base.rows, chunksPerThread: 2, quantize)
        quantizedGeneration = base.generation
    }

    /// What the engine computes with, for logs and benchmark output.
    public var description: String { kernel.summary }

    /// Sizes the scratch buffers for inputs up to [rows, cols] and weight rows up to `maxOut`.
    public func reserve(rows: Int, cols: Int, maxOut: Int) {
        if quantizesActivations && (rows > capacityRows || cols > capacityCols) {
            qx?.deallocate(); qlo?.deallocate(); qsum?.deallocate(); qx16?.deallocate(); qscale?.deallocate()
            capacityRows = max(rows, capacityRows)
            capacityCols = max(cols, capacityCols)
            let n = capacityRows * capacityCols
            qx = kernel == .avx2A16 ? nil : .allocate(capacity: n)
            qlo = kernel == .avx512vnniA16 ? .allocate(capacity: n) : nil
            qsum = kernel == .avx2A16 ? nil : .allocate(capacity: n / 32 + 1)
            qx16 = kernel == .avx2A16 ? .allocate(capacity: n) : nil
            qscale = .allocate(capacity: n / 32 + 1)
        }
        if kernel == .avx2A16 && widened == nil {
            widened = .allocate(byteCount: pool.threadCount * Self.widenedBytes, alignment: 64)
        }
        if kernel == .avx2 && panelScratch == nil {
            panelScratch = FloatBuffer(count: pool.threadCount * Self.avx2Depth * 16)
        }
        if kernel == .portable {
            let need = pool.threadCount * min(maxOut, Self.blasTileRows) * cols
            if (tile?.count ?? 0) < need { tile = FloatBuffer(count: need) }
        }
    }

    /// Declares x [rows, cols] as the input of the next projections.
    public func prepare(_ x: UnsafePointer<Float>, rows: Int, cols: Int, ldx: Int? = nil) -> PreparedInput {
        generation += 1
        let p = PreparedInput(x: x, ldx: ldx ?? cols, rows: rows, cols: cols, rowOffset: 0, generation: generation)
        prepared = p
        return p
    }

    public func multiply(_ input: PreparedInput, _ w: Linear, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                         accumulate: Bool) {
        precondition(input.cols == w.inFeatures, "input has \(input.cols) columns, weight expects \(w.inFeatures)")
        if input.rows == 0 { return }
        switch w {
        case .f32(let m):
            BLAS.matmulTransposedB(input.x, m.pointer, y, m: input.rows, n: m.rows, k: m.cols, ldx: input.ldx,
                                   ldy: ldy, accumulate: accumulate, pool: pool)
        case .q8_0(let p):
            switch kernel {
            #if arch(x86_64)
            case .avx512vnniA8, .avx512vnniA16: multiplyVNNI(input, p, y, ldy: ldy, accumulate: accumulate)
            case .avx2: multiplyAVX2(input, p, y, ldy: ldy, accumulate: accumulate)
            case .avx2A16: multiplyAVX2A16(input, p, y, ldy: ldy, accumulate: accumulate)
            #endif
            default: multiplyBLAS(input, p, y, ldy: ldy, accumulate: accumulate)
            }
        }
    }

    #if arch(x86_64)
    private func multiplyVNNI(_ input: PreparedInput, _ w: PackedQ8Matrix, _ y: UnsafeMutablePointer<Float>,
                              ldy: Int, accumulate: Bool) {
        let base = preparedBase(of: input, maxOut: w.rows)
        let wide = kernel == .avx512vnniA16
        let q = qx!, lo = qlo, sc = qscale!, sm = qsum!
        let nb = base.cols / 32
        quantizeOnce(base) { r in
            let x = base.x + r.lowerBound * base.ldx, o = r.lowerBound * base.cols, so = r.lowerBound * nb
            if wide {
                vnni16QuantizeRows(x, ldx: base.ldx, rows: r.count, cols: base.cols, hi: q + o, lo: lo! + o,
                                   ldq: base.cols, scale: sc + so, correction: sm + so, lds: nb)
            } else {
                vnniQuantizeRows(x, ldx: base.ldx, rows: r.count, cols: base.cols, q: q + o, ldq: base.cols,
                                 scale: sc + so, sum128: sm + so, lds: nb)
            }
        }
        let ro = input.rowOffset
        let x = q + ro * base.cols, xl = lo.map { $0 + ro * base.cols }, xs = sc + ro * nb, xsum = sm + ro * nb
        let rows = input.rows, ldq = base.cols
        let pairs = w.panels / 2, stride = w.panelStride, chunk = Self.vnniBlocksPerChunk
        let wbytes = UnsafeRawPointer(w.bytes)
        // Work items: (panel pair, block of rows); a row block's activations chunk stays in L2.
        let mBlocks = (rows + Self.rowBlock - 1) / Self.rowBlock
        pool.parallelFor(pairs * mBlocks) { item in
            let pair = item % pairs, mb = item / pairs
            let col0 = 32 * pair
            let cols = min(32, w.rows - col0)
            if cols <= 0 { return }
            let wp = wbytes + 2 * pair * stride
            let rowEnd = min(rows, (mb + 1) * Self.rowBlock)
            var kb = 0
            while kb < nb {
                let blocks = min(chunk, nb - kb)
                let acc = accumulate || kb > 0
                var r = mb * Self.rowBlock
                while r + 4 <= rowEnd {
                    let a = r * ldq + 32 * kb, s = r * nb + kb
                    if let xl {
                        vnni16Tile4x32(x + a, xl + a, ldx: ldq, xs: xs + s, corr: xsum + s, lds: nb, w: wp + kb * 544,
                                       panelStride: stride, blocks: blocks, y: y + r * ldy + col0, ldy: ldy,
                                       cols: cols, accumulate: acc)
                    } else {
                        vnniTile4x32(x + a, ldx: ldq, xs: xs + s, xsum: xsum + s, lds: nb, w: wp + kb * 544,
                                     panelStride: stride, blocks: blocks, y: y + r * ldy + col0, ldy: ldy,
                                     cols: cols, accumulate: acc)
                    }
                    r += 4
                }
                while r < rowEnd {
                    let a = r * ldq + 32 * kb, s = r * nb + kb
                    if let xl {
                        vnni16Tile1x32(x + a, xl + a, xs: xs + s, corr: xsum + s, w: wp + kb * 544, panelStride: stride,
                                       blocks: blocks, y: y + r * ldy + col0, cols: cols, accumulate: acc)
                    } else {
                        vnniTile1x32(x + a, xs: xs + s, xsum: xsum + s, w: wp + kb * 544, panelStride: stride,
                                     blocks: blocks, y: y + r * ldy + col0, cols: cols, accumulate: acc)
                    }
                    r += 1
                }
                kb += blocks
            }
        }
    }

    private func multiplyAVX2(_ input: PreparedInput, _ w: PackedQ8Matrix, _ y: UnsafeMutablePointer<Float>,
                              ldy: Int, accumulate: Bool) {
        reserve(rows: input.rows, cols: input.cols, maxOut: w.rows)
        let scratch = panelScratch!.pointer
        let depthBlocks = Self.avx2Depth / 32, nb = w.blocks
        let rows = input.rows, x = input.x, ldx = input.ldx
        let panels = (w.rows + 15) / 16, stride = w.panelStride
        let wbytes = UnsafeRawPointer(w.bytes)
        let mBlocks = (rows + Self.rowBlock - 1) / Self.rowBlock
        pool.parallelFor(panels * mBlocks) { item, thread in
            let p = item % panels, mb = item / panels
            let buf = scratch + thread * Self.avx2Depth * 16
            let col0 = 16 * p, cols = min(16, w.rows - col0)
            let rowEnd = min(rows, (mb + 1) * Self.rowBlock)
            var kb = 0
            while kb < nb {
                let blocks = min(depthBlocks, nb - kb)
                avx2DequantizePanel(wbytes + p * stride + kb * 544, blocks: blocks, into: buf)
                let acc = accumulate || kb > 0
                let k0 = 32 * kb
                var r = mb * Self.rowBlock
                while r + 6 <= rowEnd {
                    avx2Tile6x16(x + r * ldx + k0, ldx: ldx, b: buf, depth: 32 * blocks, y: y + r * ldy + col0,
                                 ldy: ldy, cols: cols, accumulate: acc)
                    r += 6
                }
                while r < rowEnd {
                    avx2Tile1x16(x + r * ldx + k0, b: buf, depth: 32 * blocks, y: y + r * ldy + col0, cols: cols,
                                 accumulate: acc)
                    r += 1
                }
                kb += blocks
            }
        }
    }

    private func multiplyAVX2A16(_ input: PreparedInput, _ w: PackedQ8Matrix, _ y: UnsafeMutablePointer<Float>,
                                 ldy: Int, accumulate: Bool) {
        let base = preparedBase(of: input, maxOut: w.rows)
        let q = qx16!, sc = qscale!, nb = base.cols / 32
        quantizeOnce(base) { r in
            avx2QuantizeRows16(base.x + r.lowerBound * base.ldx, ldx: base.ldx, rows: r.count, cols: base.cols,
                               q: q + r.lowerBound * base.cols, ldq: base.cols, scale: sc + r.lowerBound * nb, lds: nb)
        }
        let x = q + input.rowOffset * base.cols, xs = sc + input.rowOffset * nb, ldq = base.cols
        let rows = input.rows, depthBlocks = Self.avx2Depth / 32
        let panels = (w.rows + 15) / 16, stride = w.panelStride
        let wbytes = UnsafeRawPointer(w.bytes), scratch = widened!
        let mBlocks = (rows + Self.rowBlock - 1) / Self.rowBlock
        pool.parallelFor(panels * mBlocks) { item, thread in
            let p = item % panels, mb = item / panels
            let chunk = scratch + thread * Self.widenedBytes
            let wq = chunk.assumingMemoryBound(to: Int16.self)
            let ws = (chunk + Self.avx2Depth * 16 * 2).assumingMemoryBound(to: Float.self)
            let col0 = 16 * p, cols = min(16, w.rows - col0)
            let rowEnd = min(rows, (mb + 1) * Self.rowBlock)
            var kb = 0
            while kb < nb {
                let blocks = min(depthBlocks, nb - kb)
                avx2WidenPanel16(wbytes + p * stride + kb * 544, blocks: blocks, into: wq, scales: ws)
                let acc = accumulate || kb > 0
                var r = mb * Self.rowBlock
                while r + 6 <= rowEnd {
                    avx2I16Tile6x16(x + r * ldq + 32 * kb, ldx: ldq, xs: xs + r * nb + kb, lds: nb, w: wq, scales: ws,
                                    blocks: blocks, y: y + r * ldy + col0, ldy: ldy, cols: cols, accumulate: acc)
                    r += 6
                }
                while r < rowEnd {
                    avx2I16Tile1x16(x + r * ldq + 32 * kb, xs: xs + r * nb + kb, w: wq, scales: ws, blocks: blocks,
                                    y: y + r * ldy + col0, cols: cols, accumulate: acc)
                    r += 1
                }
                kb += blocks
            }
        }
    }
    #endif

    private func multiplyBLAS(_ input: PreparedInput, _ w: PackedQ8Matrix, _ y: UnsafeMutablePointer<Float>,
                              ldy: Int, accumulate: Bool) {
        reserve(rows: input.rows, cols: input.cols, maxOut: w.rows)
        let scratch = tile!.pointer, tileFloats = min(w.rows, Self.blasTileRows) * w.cols
        // Work items: tiles of weight rows at fixed offsets, each dequantized by the thread that multiplies it
        // in single-threaded calls over fixed row blocks (results do not depend on the thread count).
        let tiles = (w.rows + Self.blasTileRows - 1) / Self.blasTileRows
        pool.parallelFor(tiles) { t, thread in
            let first = t * Self.blasTileRows, n = min(Self.blasTileRows, w.rows - first)
            let buf = scratch + thread * tileFloats
            w.dequantizeRows(first, n, into: buf)
            var r0 = 0
            while r0 < input.rows {
                let m = min(BLAS.rowBlock, input.rows - r0)
                BLAS.matmulTransposedB(input.x + r0 * input.ldx, buf, y + r0 * ldy + first, m: m, n: n, k: w.cols,
                                       ldx: input.ldx, ldw: w.cols, ldy: ldy, accumulate: accumulate)
                r0 += m
            }
        }
    }
}
