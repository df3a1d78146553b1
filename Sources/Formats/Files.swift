#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The one way this project opens a file it reads: only regular files (a FIFO, device, socket or directory
/// gets a clear error instead of a hang), with messages a user can act on (missing, a directory, a symbolic
/// link loop, no permission), and a size limit checked before anything is allocated.
public enum Files {
    /// Opens `path` for reading after checking that it is a regular file; returns the descriptor and size.
    /// O_NONBLOCK makes opening a FIFO return at once (it is then refused by fstat); it is cleared afterwards.
    public static func openRegular(_ path: String) throws -> (fd: Int32, size: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw FileError(path: path, reason: openFailure(path, errno)) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw FileError(path: path, reason: "cannot stat: \(posixReason(e))")
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG else {
            close(fd)
            throw FileError(path: path, reason: "is \(describe(kind)), not a regular file")
        }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return (fd, Int(st.st_size))
    }

    /// Checks that `path` is a regular file without reading it (nil error text when it is).
    public static func checkRegular(_ path: String) throws {
        let (fd, _) = try openRegular(path)
        close(fd)
    }

    /// The whole content of a regular file of at most `limit` bytes.
    public static func read(_ path: String, limit: Int = 1 << 30) throws -> [UInt8] {
        let (fd, size) = try openRegular(path)
        defer { close(fd) }
        guard size <= limit else {
            throw FileError(path: path, reason: "is \(size) bytes, more than the \(limit) bytes this kind of file may have")
        }
        var out = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, size - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, reason: "read failed: \(posixReason())")
            }
            if n == 0 { out.removeSubrange(done...); break }   // the file shrank while being read
            done += n
        }
        return out
    }

    /// The content as Data (for JSON decoders).
    public static func readData(_ path: String, limit: Int = 1 << 30) throws -> Data { Data(try read(path, limit: limit)) }

    /// The content as UTF-8 text.
    public static func readText(_ path: String, limit: Int = 1 << 30) throws -> String {
        let bytes = try read(path, limit: limit)
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw FileError(path: path, reason: "is not valid UTF-8 text")
        }
        return s
    }

    /// True when `path` exists (following links) and is a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func openFailure(_ path: String, _ code: Int32) -> String {
        switch code {
        case ENOENT: return "does not exist"
        case ELOOP: return "is a symbolic link loop"
        case EACCES: return "permission denied"
        case ENOTDIR: return "a component of the path is not a directory"
        default: return "cannot open: \(posixReason(code))"
        }
    }

    static func describe(_ kind: mode_t) -> String {
        switch kind {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }

    /// True when a process with this id exists (a temporary file named after a dead process is a leftover).
    public static func processIsAlive(_ pid: Int32) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }

    /// Removes `DIR/.NAME.tmp-PID` (and `DIR/.NAME.tmp-PID.d` directories) left by processes that no longer
    /// run: the temporary files of atomic writes killed with SIGKILL. Returns what was removed.
    @discardableResult
    public static func removeLeftovers(of path: String) -> [String] {
        let dir = (path as NSString).deletingLastPathComponent
        let prefix = "." + (path as NSString).lastPathComponent + ".tmp-"
        var removed: [String] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir.isEmpty ? "." : dir)) ?? []
        where name.hasPrefix(prefix) {
            var rest = name.dropFirst(prefix.count)
            if rest.hasSuffix(".d") { rest = rest.dropLast(2) }
            guard let pid = Int32(rest), !processIsAlive(pid) else { continue }
            let full = (dir.isEmpty ? "" : dir + "/") + name
            if (try? FileManager.default.removeItem(atPath: full)) != nil { removed.append(full) }
        }
        return removed
    }
}

/// An advisory lock (flock) on a file, held until released or until the process dies (the kernel drops it,
/// so a killed run never leaves a stale lock). The holder's pid is written into the file for the message
/// a second process gets.
public final class ProcessLock {
    public let path: String
    private var fd: Int32

    /// Takes the lock or throws naming the process that holds it. `what` describes the guarded work.
    public init(path: String, what: String) throws {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0o644)
        guard fd >= 0 else { throw FileError(path: path, reason: "cannot create the lock file: \(posixReason())") }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd); fd = -1
            throw FileError(path: path, reason: "the lock file is not a regular file")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 32, 0)
            let holder = n > 0 ? String(decoding: buf[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd); fd = -1
            throw FileError(path: path, reason: "\(what) is already running in process \(holder) (it holds this lock); wait for it or stop it")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, pid, pid.count, 0)
    }

    public func release() {
        if fd >= 0 { _ = flock(fd, LOCK_UN); close(fd); fd = -1 }
    }

    deinit { release() }
}
