#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Quant

public struct FileError: LocalizedError, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var errorDescription: String? { "\(path): \(reason)" }
}

func posixReason(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// A read-only memory mapping of a whole file, unmapped when released.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let bytes: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let (fd, fileSize) = try Files.openRegular(path)
        defer { close(fd) }
        size = fileSize
        guard size > 0 else { throw FileError(path: path, reason: "file is empty") }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw FileError(path: path, reason: "cannot map \(size) bytes: \(posixReason())")
        }
        bytes = UnsafeRawPointer(p)
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: bytes), size) }

    /// Tells the kernel the range will be read sequentially soon (readahead).
    public func adviseSequential(offset: Int, count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        _ = madvise(UnsafeMutableRawPointer(mutating: bytes + start), min(size - start, count + offset - start),
                    MADV_WILLNEED)
    }
}

/// Writes a file under a temporary name in the same directory and renames it over the final name only
/// after everything is written and fsynced: a crash never leaves a half-written file under `path`.
public final class AtomicFileWriter {
    public let path: String
    public let temporaryPath: String
    private var fd: Int32
    private var buffer: [UInt8] = []
    private let bufferLimit = 4 << 20
    public private(set) var bytesWritten = 0

    public init(path: String) throws {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        temporaryPath = (dir.isEmpty ? "" : dir + "/") + ".\(base).tmp-\(getpid())"
        Files.removeLeftovers(of: path)   // temporary files of runs that were killed
        fd = open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileError(path: path, reason: "cannot create \(temporaryPath): \(posixReason())") }
        buffer.reserveCapacity(bufferLimit)
    }

    deinit {
        if fd >= 0 { close(fd); unlink(temporaryPath) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        if buffer.count + bytes.count > bufferLimit { try flushBuffer() }
        if bytes.count >= bufferLimit {
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
        bytesWritten += bytes.count
    }

    public func write(_ data: [UInt8]) throws { try data.withUnsafeBytes { try write($0) } }
    public func write(_ string: String) throws { try write(Array(string.utf8)) }

    private func flushBuffer() throws {
        if buffer.isEmpty { return }
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, reason: "write failed: \(posixReason())")
            }
            offset += n
        }
    }

    /// Flushes, fsyncs, renames to the final name and fsyncs the directory. `verify` reads the complete
    /// temporary file (its path is passed) before it is installed; if it throws, nothing is installed.
    public func commit(verify: ((String) throws -> Void)? = nil) throws {
        try flushBuffer()
        guard fsync(fd) == 0 else { throw FileError(path: path, reason: "fsync failed: \(posixReason())") }
        close(fd)
        fd = -1
        if let verify {
            do { try verify(temporaryPath) } catch { unlink(temporaryPath); throw error }
        }
        guard rename(temporaryPath, path) == 0 else {
            let reason = posixReason()
            unlink(temporaryPath)
            throw FileError(path: path, reason: "rename failed: \(reason)")
        }
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}

extension MappedFile {
    /// Drops the pages of a range from this process's resident set (they stay in the page cache and are
    /// read again if touched). Used after repacking a tensor so the mapped copy does not count twice.
    public func release(offset: Int, count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page
        let end = (offset + count) / page * page
        if end > start { _ = madvise(UnsafeMutableRawPointer(mutating: bytes + start), end - start, MADV_DONTNEED) }
    }
}
