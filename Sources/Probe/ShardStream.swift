import CZstd
import Foundation
import Quant
import Formats

/// Reads a shard file as a stream: the zstd frame is decompressed in small pieces straight into the
/// caller's memory, so neither the compressed file nor its decompressed content is ever held whole.
/// One hook's tensor (resid_post by default) is delivered row by row, the other hooks' are skipped;
/// `label`, `row`, `n_tokens` and the metadata are returned.
/// Every failure is a ShardError naming the file (and the row for bad values).
struct ShardStream {
    struct Contents {
        var metadata: ShardMetadata
        var labels: [Int64]
        var rows: [Int64]
        var nTokens: [Int64]
        var count: Int { labels.count }
    }

    /// Bytes of the input buffer read from the file at a time.
    static let inputChunk = 1 << 20

    /// Streams `path`. `rowSink(i, bytes)` receives row i of `hook` ([layers, dModel] in the stored
    /// type, `bytes` valid only during the call). `header` is called with the metadata and row count before the first row.
    /// When `rowTarget(i)` returns memory (rowBytes long), row i is decompressed straight into it and `rowSink`
    /// receives that memory: no copy through the scratch row.
    /// `labelsOnly`: stop as soon as label, row and n_tokens are read (shards written since they come first;
    /// older shards are decompressed through resid_post), without checking the frame's checksum.
    /// `hook`: nil = the first the metadata lists.
    static func read(path: String, hook wanted: String? = ReadoutRecipe.defaultHook, header: (ShardMetadata, Int) throws -> Void = { _, _ in },
                     labelsOnly: Bool = false,
                     rowTarget: (Int) -> UnsafeMutableRawPointer? = { _ in nil },
                     rowSink: (Int, UnsafeRawPointer) throws -> Void) throws -> Contents {
        var s = try Decompressor(path: path)   // closes its file and frees its context when it goes out of scope
        func fail(_ reason: String) -> ShardError { ShardError(file: path, reason: reason) }

        let lengthBytes = try s.readGrowing(8)
        let headerLength = lengthBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        guard headerLength > 1, headerLength <= UInt64(SafeTensorsFile.maxHeaderBytes) else {
            throw fail("corrupt shard content: safetensors header length \(headerLength) is invalid")
        }
        let headerBytes = try s.readGrowing(Int(headerLength))
        let parsed: SafeTensorsHeader
        do { parsed = try SafeTensorsHeader(json: Data(headerBytes), dataSize: nil, file: path) } catch let e as SafeTensorsError {
            throw fail("corrupt shard content: " + (e.tensor.map { "tensor '\($0)': " } ?? "") + e.reason)
        }
        let meta = parsed.metadata
        let entries = parsed.entries
        let metadata = try ShardMetadata(stringMap: meta, file: path)
        func entry(_ name: String) throws -> SafeTensorsHeader.Entry {
            guard let e = entries.first(where: { $0.name == name }) else { throw fail("shard lacks the tensor '\(name)'") }
            return e
        }
        let hook = wanted ?? metadata.hooks[0]
        guard metadata.hooks.contains(hook) else {
            throw fail("holds no '\(hook)' activations; its hooks: \(metadata.hooks.joined(separator: ", "))")
        }
        // Every hook the metadata lists is there with the same shape and type (not only the one read).
        var n = 0
        for (k, h) in metadata.hooks.enumerated() {
            let t = try entry(h)
            if k == 0 { n = t.shape.first ?? 0 }
            guard t.shape == [n, metadata.layers.count, metadata.dModel] else {
                throw fail("\(h) has shape \(t.shape), expected [\(n), \(metadata.layers.count), \(metadata.dModel)]")
            }
            guard t.dtype == metadata.dtype.safeTensors else {
                throw fail("\(h) is \(t.dtype.rawValue) but the metadata says \(metadata.dtype.rawValue)")
            }
        }
        for name in ["label", "row", "n_tokens"] {
            let e = try entry(name)
            guard e.shape == [n], e.dtype == .i64 || e.dtype == .i32 else {
                throw fail("'\(name)' is \(e.dtype.rawValue) \(e.shape); expected I64/I32 [\(n)]")
            }
        }
        try header(metadata, n)

        var position = 0   // bytes of the data section consumed
        var values: [String: [Int64]] = [:]
        let rowBytes = metadata.hookRowElements * metadata.dtype.safeTensors.elementSize   // bounded by validate
        // The scratch row grows as decompressed bytes actually arrive (never to a size only declared).
        var scratch = Scratch()   // freed in its deinit
        var stoppedEarly = false
        for e in entries {   // in data order
            if labelsOnly && ["label", "row", "n_tokens"].allSatisfy({ values[$0] != nil }) { stoppedEarly = true; break }
            guard e.begin >= position else { throw fail("corrupt shard content: tensor '\(e.name)' overlaps another") }
            try s.skip(e.begin - position)
            position = e.begin
            switch e.name {
            case hook:
                for i in 0..<n {
                    if let dst = rowTarget(i) {
                        try s.read(into: dst, count: rowBytes)
                        try rowSink(i, UnsafeRawPointer(dst))
                    } else {
                        let dst = try scratch.fill(rowBytes, from: &s)
                        try rowSink(i, UnsafeRawPointer(dst))
                    }
                }
            case "label", "row", "n_tokens":
                let count = e.shape[0]
                let raw = try s.readGrowing(e.end - e.begin)
                values[e.name] = raw.withUnsafeBytes { p in
                    (0..<count).map { e.dtype == .i64 ? p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self).littleEndian
                                                      : Int64(p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self).littleEndian) }
                }
            default:
                try s.skip(e.end - e.begin)
            }
            position = e.end
        }
        if !stoppedEarly { try s.finish() }
        guard let labels = values["label"], let rows = values["row"], let nTokens = values["n_tokens"] else {
            throw fail("corrupt shard content: label, row or n_tokens was not read")
        }
        if let i = labels.firstIndex(where: { $0 < 0 || $0 >= Int64(metadata.labels.count) }) {
            throw fail("row \(rows[i]): label id \(labels[i]) is outside the \(metadata.labels.count) labels")
        }
        return Contents(metadata: metadata, labels: labels, rows: rows, nTokens: nTokens)
    }

    /// A buffer that grows (in steps of at most 1 MiB of decompressed data) while it is filled; not copyable,
    /// freed once in deinit.
    struct Scratch: ~Copyable {
        private var base: UnsafeMutableRawPointer?
        private var capacity = 0

        /// At least `bytes` bytes, keeping the content.
        mutating func reserve(_ bytes: Int) -> UnsafeMutableRawPointer {
            if let b = base, bytes <= capacity { return b }
            let newCapacity = max(bytes, min(capacity * 2, bytes + (1 << 20)), 1 << 16)
            let p = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 64)
            if let old = base { p.copyMemory(from: old, byteCount: capacity); old.deallocate() }
            base = p
            capacity = newCapacity
            return p
        }

        /// Fills `count` bytes from the stream, growing as they arrive; returns the start.
        mutating func fill(_ count: Int, from s: inout Decompressor) throws -> UnsafeMutableRawPointer {
            var done = 0
            repeat {
                let n = min(count - done, 1 << 20)
                let b = reserve(done + n)
                if n > 0 { try s.read(into: b + done, count: n) }
                done += n
            } while done < count
            return reserve(count)
        }

        deinit { base?.deallocate() }
    }

    /// ZSTD_decompressStream over a file read in chunks. Not copyable: it owns its descriptor, context and
    /// buffer, released once in deinit.
    struct Decompressor: ~Copyable {
        let path: String
        private let fd: Int32
        private let dctx: OpaquePointer
        private let input: UnsafeMutableRawPointer
        private var inSize = 0, inPos = 0
        private var eof = false
        private var lastReturn = 1   // 0 once a frame is complete
        private var produced = false

        init(path: String) throws {
            let file: Int32
            do { file = try Files.openRegular(path).fd } catch let e as FileError {
                throw ShardError(file: path, reason: "cannot read: \(e.reason)")
            }
            guard let d = ZSTD_createDCtx() else { _ = Glibc.close(file); throw ShardError(file: path, reason: "cannot create a zstd context") }
            self.path = path
            fd = file
            dctx = d
            input = UnsafeMutableRawPointer.allocate(byteCount: ShardStream.inputChunk, alignment: 64)
        }

        deinit {
            ZSTD_freeDCtx(dctx)
            input.deallocate()
            _ = Glibc.close(fd)
        }

        private mutating func refill() throws {
            inPos = 0
            while true {
                let r = Glibc.read(fd, input, ShardStream.inputChunk)
                if r < 0 {
                    if errno == EINTR { continue }
                    throw ShardError(file: path, reason: "read failed: \(String(cString: strerror(errno)))")
                }
                inSize = r
                if r == 0 { eof = true }
                return
            }
        }

        /// Fills exactly `count` bytes of decompressed content.
        mutating func read(into dst: UnsafeMutableRawPointer, count: Int) throws {
            var out = ZSTD_outBuffer(dst: dst, size: count, pos: 0)
            while out.pos < out.size {
                try step(&out)
                if out.pos < out.size && lastReturn == 0 { throw truncated() }
            }
        }

        /// One ZSTD_decompressStream call, refilling the input first when it is used up.
        private mutating func step(_ out: inout ZSTD_outBuffer) throws {
            if inPos == inSize && !eof { try refill() }
            var inb = ZSTD_inBuffer(src: input, size: inSize, pos: inPos)
            let before = out.pos, inBefore = inb.pos
            let r = ZSTD_decompressStream(dctx, &out, &inb)
            inPos = inb.pos
            if ZSTD_isError(r) != 0 {
                throw ShardError(file: path, reason: "corrupt or truncated shard: zstd: \(String(cString: ZSTD_getErrorName(r)))")
            }
            if out.pos > before { produced = true }
            lastReturn = r
            // No progress with the whole file read: the frame is cut short.
            if r != 0 && eof && out.pos == before && inb.pos == inBefore { throw truncated() }
        }

        private func truncated() -> ShardError {
            ShardError(file: path, reason: produced ? "corrupt or truncated shard: the zstd frame ends early" : "empty or unreadable file: not a zstd shard")
        }

        mutating func skip(_ count: Int) throws {
            var buf = [UInt8](repeating: 0, count: min(count, 1 << 16))
            var left = count
            while left > 0 {
                let n = min(left, buf.count)
                try buf.withUnsafeMutableBytes { p in
                    guard let b = p.baseAddress else { return }
                    try read(into: b, count: n)
                }
                left -= n
            }
        }

        /// `count` bytes of content as an array that grows as they arrive (at most 1 MiB beyond the data read).
        mutating func readGrowing(_ count: Int) throws -> [UInt8] {
            var out: [UInt8] = []
            while out.count < count {
                let start = out.count, n = min(count - start, 1 << 20)
                out.append(contentsOf: repeatElement(0, count: n))
                try out.withUnsafeMutableBytes { p in
                    guard let b = p.baseAddress else { return }
                    try read(into: b + start, count: n)
                }
            }
            return out
        }

        /// The frame must end exactly here (its checksum is verified by zstd at the end of the frame).
        mutating func finish() throws {
            var dummy: UInt8 = 0
            while lastReturn != 0 {
                let extra = try withUnsafeMutableBytes(of: &dummy) { d -> Int in
                    var out = ZSTD_outBuffer(dst: d.baseAddress!, size: 1, pos: 0)
                    try step(&out)
                    return out.pos
                }
                if extra > 0 { throw ShardError(file: path, reason: "corrupt shard content: data after the last tensor") }
            }
        }
    }
}
