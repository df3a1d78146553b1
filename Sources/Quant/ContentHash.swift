/// A fast 128-bit digest of a byte range, for telling weight tensors apart (model fingerprints). Not
/// cryptographic: it separates checkpoints that differ by accident (another seed, a merged LoRA), it does not
/// resist someone crafting a collision. Four 64-bit lanes per half, xxHash64's round and avalanche; about
/// memory speed, so the fingerprint of a 13B model costs seconds, not the minute SHA-256 would.
public enum ContentHash {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87, p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9, p4: UInt64 = 0x85EB_CA77_C2B2_AE63

    @inline(__always)
    static func round(_ acc: SIMD4<UInt64>, _ v: SIMD4<UInt64>) -> SIMD4<UInt64> {
        let a = acc &+ v &* p2
        return ((a &<< 31) | (a &>> 33)) &* p1
    }

    @inline(__always)
    static func avalanche(_ x: UInt64) -> UInt64 {
        var h = x
        h ^= h >> 33; h = h &* p2
        h ^= h >> 29; h = h &* p3
        h ^= h >> 32
        return h
    }

    /// The digest of `count` bytes at `p` (16 bytes, little-endian halves).
    public static func digest(_ p: UnsafeRawPointer, _ count: Int) -> (UInt64, UInt64) {
        var a = SIMD4<UInt64>(p1 &+ p2, p2, 0, 0 &- p1)
        var b = SIMD4<UInt64>(p3, p4, p3 &+ 1, p4 &+ 1)
        var i = 0
        while i + 64 <= count {
            let v = p.loadUnaligned(fromByteOffset: i, as: SIMD4<UInt64>.self)
            let w = p.loadUnaligned(fromByteOffset: i + 32, as: SIMD4<UInt64>.self)
            a = round(a, v)
            b = round(b, w)
            i += 64
        }
        // The tail (< 64 bytes) zero-padded; the length goes into the final mix.
        var tail = (SIMD4<UInt64>(), SIMD4<UInt64>())
        withUnsafeMutableBytes(of: &tail) { t in
            if count > i { t.baseAddress!.copyMemory(from: p + i, byteCount: count - i) }
        }
        a = round(a, tail.0)
        b = round(b, tail.1)
        let n = UInt64(truncatingIfNeeded: count)
        var h1 = n &* p1, h2 = n &* p4
        for k in 0..<4 {
            h1 = (h1 ^ round(SIMD4(repeating: 0), SIMD4(repeating: a[k]))[0]) &* p1 &+ p4
            h2 = (h2 ^ round(SIMD4(repeating: 0), SIMD4(repeating: b[k]))[0]) &* p1 &+ p4
        }
        return (avalanche(h1 ^ (h2 >> 17)), avalanche(h2 ^ h1))
    }

    /// The digests of `units` pieces of a tensor, computed on the pool: `unit(i)` gives piece i's bytes (and
    /// may use the per-thread scratch given to it). The partition is the caller's, fixed by the tensor's shape,
    /// so the result does not depend on the thread count. 16 bytes per unit, in order.
    public static func digests(units: Int, pool: ThreadPool,
                               _ unit: (_ index: Int, _ thread: Int) -> (UnsafeRawPointer, Int)) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: units * 16)
        out.withUnsafeMutableBytes { o in
            let base = o.baseAddress!
            pool.parallelFor(units) { i, t in
                let (p, n) = unit(i, t)
                let (h1, h2) = digest(p, n)
                (base + 16 * i).storeBytes(of: h1.littleEndian, as: UInt64.self)
                (base + 16 * i + 8).storeBytes(of: h2.littleEndian, as: UInt64.self)
            }
        }
        return out
    }
}
