/// Q8_0 weights repacked for the GEMM kernels. Same information as the Q8_0 rows (int8 values and one f16
/// scale per 32), 1.0625 bytes per weight, laid out so a kernel streams 16 output columns at a time:
///
///     panel p (output rows 16p ..< 16p+16), block b (inputs 32b ..< 32b+32): 544 bytes
///       [0, 512)   8 groups g × 16 columns c × 4 bytes: q[16p + c][32b + 4g + j] + 128 as UInt8, j = 0..<4
///       [512, 544) 16 f16 scales d[16p + c][b]
///
/// Panels follow each other ([panel][block][544]); the panel count is padded to even (zero weights,
/// zero scales) so kernels can always take panels in pairs. Storing q + 128 makes the weights the
/// unsigned operand of `vpdpbusd`; the kernel subtracts 128 · Σ x per block.
public final class PackedQ8Matrix: @unchecked Sendable {
    public static let panelWidth = 16
    public static let blockBytes = 544
    /// Output features (matrix rows) and input features (row length).
    public let rows: Int
    public let cols: Int
    public let blocks: Int
    public let panels: Int
    public let bytes: UnsafeMutableRawPointer
    public var byteCount: Int { panels * blocks * Self.blockBytes }
    public var panelStride: Int { blocks * Self.blockBytes }

    init(rows: Int, cols: Int) {
        precondition(cols % Q8_0.blockSize == 0, "row length \(cols) is not a multiple of 32")
        self.rows = rows
        self.cols = cols
        blocks = cols / Q8_0.blockSize
        let p = (rows + Self.panelWidth - 1) / Self.panelWidth
        panels = p + (p & 1)
        let n = panels * blocks * Self.blockBytes
        bytes = UnsafeMutableRawPointer.allocate(byteCount: max(n, 64), alignment: 64)
    }

    deinit { bytes.deallocate() }

    /// Repacks `rows` Q8_0 rows of `cols` elements each (ggml block_q8_0 layout, row after row).
    public convenience init(q8_0 src: UnsafeRawPointer, rows: Int, cols: Int, pool: ThreadPool) {
        self.init(rows: rows, cols: cols)
        let rowBytes = blocks * Q8_0.blockBytes
        pool.parallelFor(panels) { p in
            for b in 0..<self.blocks {
                let dst = self.bytes + (p * self.blocks + b) * Self.blockBytes
                for c in 0..<Self.panelWidth {
                    let r = p * Self.panelWidth + c
                    guard r < rows else {
                        for g in 0..<8 { (dst + g * 64 + c * 4).storeBytes(of: 0x8080_8080 as UInt32, as: UInt32.self) }
                        (dst + 512 + 2 * c).storeBytes(of: 0 as UInt16, as: UInt16.self)
                        continue
                    }
                    let block = src + r * rowBytes + b * Q8_0.blockBytes
                    (dst + 512 + 2 * c).storeBytes(of: block.loadUnaligned(as: UInt16.self), as: UInt16.self)
                    for g in 0..<8 {
                        let w = block.loadUnaligned(fromByteOffset: 2 + 4 * g, as: UInt32.self) ^ 0x8080_8080
                        (dst + g * 64 + c * 4).storeBytes(of: w, as: UInt32.self)
                    }
                }
            }
        }
    }

    /// Quantizes f32 rows to Q8_0 (ggml's reference rounding) and repacks them.
    public convenience init(quantizing src: UnsafePointer<Float>, rows: Int, cols: Int, pool: ThreadPool) {
        let rowBytes = cols / Q8_0.blockSize * Q8_0.blockBytes
        let q = UnsafeMutableRawPointer.allocate(byteCount: max(1, rows * rowBytes), alignment: 64)
        defer { q.deallocate() }
        pool.parallelRanges(rows, chunksPerThread: 4) { r in
            for i in r { QuantType.q8_0.fromFloat(src + i * cols, q + i * rowBytes, cols) }
        }
        self.init(q8_0: q, rows: rows, cols: cols, pool: pool)
    }

    /// Row `r` in the ggml block_q8_0 layout (f16 scale, then 32 int8 per block; cols / 32 · 34 bytes): the
    /// inverse of the repacking, so a stored GGUF row and its packed form give the same bytes back.
    public func copyRowQ8_0(_ r: Int, into dst: UnsafeMutableRawPointer) {
        let p = r / Self.panelWidth, c = r % Self.panelWidth
        for b in 0..<blocks {
            let blk = UnsafeRawPointer(bytes + (p * blocks + b) * Self.blockBytes)
            let out = dst + b * Q8_0.blockBytes
            out.storeBytes(of: blk.loadUnaligned(fromByteOffset: 512 + 2 * c, as: UInt16.self), as: UInt16.self)
            for g in 0..<8 {
                let w = blk.loadUnaligned(fromByteOffset: g * 64 + c * 4, as: UInt32.self) ^ 0x8080_8080
                (out + 2 + 4 * g).storeBytes(of: w, as: UInt32.self)
            }
        }
    }

    /// Dequantizes output rows [first, first + count) into dst ([count, cols] row-major).
    public func dequantizeRows(_ first: Int, _ count: Int, into dst: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            let r = first + i
            let p = r / Self.panelWidth, c = r % Self.panelWidth
            let out = dst + i * cols
            for b in 0..<blocks {
                let blk = UnsafeRawPointer(bytes + (p * blocks + b) * Self.blockBytes)
                let d = f16ToFloat(blk.loadUnaligned(fromByteOffset: 512 + 2 * c, as: UInt16.self))
                for g in 0..<8 {
                    let w = blk.loadUnaligned(fromByteOffset: g * 64 + c * 4, as: UInt32.self)
                    for j in 0..<4 {
                        let q = Int(UInt8(truncatingIfNeeded: w >> (8 * j))) - 128
                        out[b * 32 + 4 * g + j] = Float(q) * d
                    }
                }
            }
        }
    }
}
