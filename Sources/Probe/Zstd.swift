import CZstd
import Foundation

public struct ZstdError: LocalizedError, Equatable {
    public let reason: String
    public var errorDescription: String? { "zstd: \(reason)" }
}

/// One-shot zstd frames with the content size and a checksum in the frame header, as the shard format
/// requires (a truncated or corrupted frame is detected on decompression).
public enum Zstd {
    public static func compress(_ input: UnsafeRawBufferPointer, level: Int32 = 3, threads: Int = 0) throws -> [UInt8] {
        guard let cctx = ZSTD_createCCtx() else { throw ZstdError(reason: "cannot create a compression context") }
        defer { ZSTD_freeCCtx(cctx) }
        try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level))
        try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1))
        try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1))
        if threads > 0 { try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, Int32(threads))) }
        var out = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let n = out.withUnsafeMutableBytes { o in
            ZSTD_compress2(cctx, o.baseAddress, o.count, input.baseAddress, input.count)
        }
        try check(n)
        out.removeSubrange(n...)
        return out
    }

    public static func compress(_ input: [UInt8], level: Int32 = 3, threads: Int = 0) throws -> [UInt8] {
        try input.withUnsafeBytes { try compress($0, level: level, threads: threads) }
    }

    /// Decompresses one frame whose header records its content size (refuses frames without one, and
    /// content larger than `limit`). The output grows as content is actually produced (at most 1 MiB
    /// ahead): a small file whose header declares a huge size fails at its end, having allocated little.
    public static func decompress(_ input: UnsafeRawBufferPointer, limit: Int = 1 << 40) throws -> [UInt8] {
        let size = ZSTD_getFrameContentSize(input.baseAddress, input.count)
        // ZSTD_CONTENTSIZE_UNKNOWN = 0ULL - 1, ZSTD_CONTENTSIZE_ERROR = 0ULL - 2 (the macros do not import).
        if size == UInt64.max - 1 { throw ZstdError(reason: "not a zstd frame (bad magic or truncated header)") }
        if size == UInt64.max { throw ZstdError(reason: "frame does not record its content size") }
        guard size <= UInt64(limit) else { throw ZstdError(reason: "frame content of \(size) bytes exceeds the limit \(limit)") }
        let declared = Int(size)
        guard let dctx = ZSTD_createDCtx() else { throw ZstdError(reason: "cannot create a decompression context") }
        defer { ZSTD_freeDCtx(dctx) }
        var out: [UInt8] = []
        var inb = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            let start = out.count
            let room = min(declared - min(start, declared), 1 << 20) + 1   // one byte more reveals excess content
            out.append(contentsOf: repeatElement(0, count: room))
            let inBefore = inb.pos
            var produced = 0
            let r = out.withUnsafeMutableBytes { o -> Int in
                var ob = ZSTD_outBuffer(dst: o.baseAddress.map { $0 + start }, size: room, pos: 0)
                let r = ZSTD_decompressStream(dctx, &ob, &inb)
                produced = ob.pos
                return r
            }
            out.removeSubrange((start + produced)...)
            try check(r)
            guard out.count <= declared else { throw ZstdError(reason: "frame content is larger than the \(declared) bytes its header declares") }
            if r == 0 { break }   // frame complete (checksum verified)
            if produced == 0 && inb.pos == inBefore {   // no progress: the input ends inside the frame
                throw ZstdError(reason: "truncated frame: \(out.count) of the \(declared) bytes its header declares")
            }
        }
        guard out.count == declared else { throw ZstdError(reason: "frame decoded to \(out.count) bytes, header says \(declared)") }
        guard inb.pos == inb.size else { throw ZstdError(reason: "\(inb.size - inb.pos) bytes after the frame") }
        return out
    }

    public static func decompress(_ input: [UInt8], limit: Int = 1 << 40) throws -> [UInt8] {
        try input.withUnsafeBytes { try decompress($0, limit: limit) }
    }

    static func check(_ code: Int) throws {
        if ZSTD_isError(code) != 0 { throw ZstdError(reason: String(cString: ZSTD_getErrorName(code))) }
    }
}
