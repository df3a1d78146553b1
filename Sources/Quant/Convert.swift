// Exact conversions between f32 and the 16-bit float storage types.
//
// f16 -> f32 and bf16 -> f32 are exact (every 16-bit value is representable in f32).
// f32 -> f16 uses Float16's round-to-nearest-even; f32 -> bf16 rounds to nearest even by hand
// (there is no BFloat16 type in Swift on Linux; bf16 is the top half of an f32 bit pattern).

@inline(__always)
public func bf16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) &<< 16)
}

@inline(__always)
public func floatToBF16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: bits &>> 16) | 0x0040 }  // keep it a (quiet) NaN
    let roundingBias: UInt32 = 0x7FFF &+ ((bits &>> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ roundingBias) &>> 16)
}

@inline(__always)
public func f16ToFloat(_ bits: UInt16) -> Float {
    Float(Float16(bitPattern: bits))
}

@inline(__always)
public func floatToF16(_ value: Float) -> UInt16 {
    Float16(value).bitPattern
}

/// Row conversions used by the type table. Written as plain loops over unaligned loads so that LLVM
/// vectorises them (vcvtph2ps with F16C; shifts for bf16). Unaligned sources are fine.
enum RowConvert {
    static func f16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for i in 0..<count { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    }

    static func bf16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for i in 0..<count { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    }

    static func f32ToF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for i in 0..<count { dst.storeBytes(of: floatToF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
    }

    static func f32ToBF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for i in 0..<count { dst.storeBytes(of: floatToBF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
    }

    static func copyF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 * count)
    }

    static func storeF32(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        dst.copyMemory(from: src, byteCount: 4 * count)
    }
}
