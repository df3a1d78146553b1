#if canImport(Glibc)
import Glibc
#endif
import Foundation
@testable import Probe
import Quant
import Formats
import Testing

/// Issue 9, the probe side: mutated manifests, shards, .pth files and .npy files built in each test. Every
/// case must give one clear error naming the file, the field and the problem: no trap, no hang, no bomb.
@Suite struct HostileFileTests {
    /// Runs `body`, expects an error whose description contains every fragment.
    static func expectError(_ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected an error mentioning \(fragments)", sourceLocation: sourceLocation)
        } catch {
            let message = error.localizedDescription
            for f in fragments { #expect(message.contains(f), "'\(message)' lacks '\(f)'", sourceLocation: sourceLocation) }
        }
    }

    /// A valid directory: 30 rows, 8 per shard (4 shards), 3 classes, 2 layers, d_model 8, rows_total 30.
    static func shardDirectory(_ dir: String) throws -> String {
        let s = try TrainBadInputTests.shards(dir)
        try editManifest(s) { m in
            var c = m["config"] as! [String: Any]
            c["rows_total"] = "30"
            m["config"] = c
        }
        return s
    }

    static func manifestPath(_ shards: String) -> String { shards + "/" + Manifest.fileName(worker: 0) }

    /// Rewrites the manifest JSON through `edit` (no validation on the way: the mutation is the point).
    static func editManifest(_ shards: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = manifestPath(shards)
        var m = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&m)
        try JSONSerialization.data(withJSONObject: m).write(to: URL(fileURLWithPath: path))
    }

    static func editShard(_ shards: String, _ i: Int, _ edit: (inout [String: Any]) -> Void) throws {
        try editManifest(shards) { m in
            var list = m["shards"] as! [[String: Any]]
            edit(&list[i])
            m["shards"] = list
        }
    }

    /// Replaces shard `i`'s file with `bytes` and records their size and checksum in the manifest, so only
    /// the content is hostile.
    static func replaceShard(_ shards: String, _ i: Int, with bytes: [UInt8]) throws {
        let name = Shard.fileName(worker: 0, index: i)
        try Data(bytes).write(to: URL(fileURLWithPath: shards + "/" + name))
        try editShard(shards, i) { s in s["bytes"] = bytes.count; s["sha256"] = SHA256.hex(bytes) }
    }

    // MARK: row 1: manifest numbers

    @Test("manifest numbers: negative or huge count, workers 0/-1/10^12, rows_total and d_model out of range")
    func manifestNumbers() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let good = try Data(contentsOf: URL(fileURLWithPath: Self.manifestPath(s)))
        let m = Self.manifestPath(s)
        func restore() throws { try good.write(to: URL(fileURLWithPath: m)) }

        try Self.editShard(s, 0) { $0["count"] = -5 }
        Self.expectError([m, "shard 0 ('shard-00000-00000.safetensors.zst'): 'count' -5 is not in 1...8"]) { _ = try ShardDirectory(path: s) }
        // train used to write labels at negative offsets with this manifest
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [m, "'count' -5 is not in 1...8"])
        try restore()
        try Self.editShard(s, 1) { $0["count"] = 1 << 62 }
        Self.expectError([m, "shard 1", "'count' 4611686018427387904 is not in 1...8"]) { _ = try ShardDirectory(path: s) }

        for w in [0, -1, 1_000_000_000_000] {
            try restore()
            try Self.editManifest(s) { $0["workers"] = w }
            Self.expectError([m, "'workers' \(w) is not in 1...65536"]) { _ = try ShardVerification.run(directory: s) }
        }
        try restore()
        try Self.editManifest(s) { $0["worker"] = 3; $0["workers"] = 2 }
        Self.expectError([m, "'worker' 3 is not in 0..<2"]) { _ = try ShardDirectory(path: s) }

        try restore()
        try Self.editManifest(s) { var c = $0["config"] as! [String: Any]; c["rows_total"] = "1000000000000000000"; $0["config"] = c }
        Self.expectError([m, "'rows_total' 1000000000000000000 is not a row count in 0...1099511627776"]) { _ = try ShardDirectory(path: s) }
        try restore()
        try Self.editManifest(s) { var c = $0["config"] as! [String: Any]; c["rows_total"] = "20"; $0["config"] = c }
        Self.expectError([m, "shard 2", "rows 16...23 are not inside the input's 20 rows"]) { _ = try ShardDirectory(path: s) }

        // A large but valid rows_total: verify counts the missing rows without walking or listing them all.
        try restore()
        try Self.editManifest(s) { var c = $0["config"] as! [String: Any]; c["rows_total"] = String(1 << 40); $0["config"] = c }
        let t0 = Date()
        let v = try ShardVerification.run(directory: s)
        #expect(v.problems == ["\((1 << 40) - 30) missing rows: " + (30..<50).map(String.init).joined(separator: ", ") + ", …"])
        #expect(Date().timeIntervalSince(t0) < 5)

        for (key, value, message) in [("d_model", 1 << 61, "shard metadata: 'd_model' 2305843009213693952 is not in 1...1048576"),
                                      ("d_model", 0, "shard metadata: 'd_model' 0 is not in 1...1048576")] as [(String, Int, String)] {
            try restore()
            try Self.editManifest(s) { var md = $0["metadata"] as! [String: Any]; md[key] = value; $0["metadata"] = md }
            Self.expectError([m, message]) { _ = try ShardDirectory(path: s) }
        }
        try restore()
        try Self.editManifest(s) { var md = $0["metadata"] as! [String: Any]; md["layers"] = [0, -1]; $0["metadata"] = md }
        Self.expectError([m, "layer -1 in 'layers' is not in 0..<4096"]) { _ = try ShardDirectory(path: s) }
        try restore()
        try Self.editShard(s, 0) { $0["bytes"] = 0 }
        Self.expectError([m, "'count' 8 rows cannot fit in 0 bytes"]) { _ = try ShardDirectory(path: s) }
        try restore()
        try Self.editShard(s, 0) { $0["sha256"] = "../x" }
        Self.expectError([m, "'sha256' is not 64 lowercase hex digits"]) { _ = try ShardDirectory(path: s) }
        // a count that fits the manifest but not the file present
        try restore()
        try Self.editShard(s, 3) { $0["bytes"] = ($0["bytes"] as! Int) + 1 }
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [Self.shardFileName(s, 3), "but its manifest records"])
        try restore()
        _ = try ShardDirectory(path: s)
        try? FileManager.default.removeItem(atPath: dir)
    }

    static func shardFileName(_ s: String, _ i: Int) -> String { s + "/" + Shard.fileName(worker: 0, index: i) }

    // MARK: row 2: manifest file names

    @Test("manifest file names outside the directory or of another worker are refused by verify and train")
    func manifestNames() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let m = Self.manifestPath(s)
        // data outside the directory that would pass every other check
        try FileManager.default.createDirectory(atPath: dir + "/elsewhere", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.shardFileName(s, 0), toPath: dir + "/elsewhere/" + Shard.fileName(worker: 0, index: 0))
        for name in ["../elsewhere/" + Shard.fileName(worker: 0, index: 0), "../../etc/passwd", "shard-00001-00000.safetensors.zst",
                     "/etc/passwd", Shard.fileName(worker: 0, index: 1)] {
            try Self.editShard(s, 0) { $0["file"] = name }
            let fragments = [m, "shard 0 ('\(name)'): 'file' and 'index' must name this worker's shard 0, 'shard-00000-00000.safetensors.zst'"]
            Self.expectError(fragments) { _ = try ShardVerification.run(directory: s) }
            TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), fragments)
        }
        // A manifest whose name is not its worker's.
        try Self.editShard(s, 0) { $0["file"] = Shard.fileName(worker: 0, index: 0) }
        try FileManager.default.moveItem(atPath: m, toPath: s + "/" + Manifest.fileName(worker: 1))
        Self.expectError([Manifest.fileName(worker: 1), "holds the manifest of worker 0; its name must be manifest-00000.json"]) {
            _ = try ShardDirectory(path: s)
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: row 4: zstd frames that lie, shapes that overflow

    /// A 17-byte zstd frame: magic, a header declaring `size` bytes of content (single segment, 8-byte size),
    /// one raw block header promising 100 bytes and 1 byte of them.
    static func lyingFrame(size: UInt64) -> [UInt8] {
        var b: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xE0]
        for i in 0..<8 { b.append(UInt8((size >> UInt64(8 * i)) & 0xFF)) }
        let block: UInt32 = 100 << 3   // raw block, not last, 100 bytes
        b += [UInt8(block & 0xFF), UInt8((block >> 8) & 0xFF), UInt8((block >> 16) & 0xFF), 0x41]
        return b
    }

    @Test("a 17-byte shard whose zstd header declares 512 GiB (or 100 MiB) allocates nothing of it")
    func lyingZstdFrame() throws {
        let frame = Self.lyingFrame(size: 1 << 39)
        #expect(frame.count == 17)
        // Zstd.decompress used to allocate the declared size up front (here: abort); streamed, zstd refuses
        // the window, or the data ends after 1 byte of the 100 MiB declared.
        Self.expectError(["zstd: Frame requires too much memory for decoding"]) { _ = try Zstd.decompress(frame) }
        Self.expectError(["zstd: truncated frame: 1 of the 104857600 bytes its header declares"]) { _ = try Zstd.decompress(Self.lyingFrame(size: 100 << 20)) }
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        try Self.replaceShard(s, 1, with: frame)
        let v = try ShardVerification.run(directory: s)
        #expect(v.problems.contains { $0.contains(Self.shardFileName(s, 1)) && $0.contains("corrupt or truncated shard") }, "\(v.problems)")
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [Self.shardFileName(s, 1), "corrupt or truncated shard"])
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A shard whose safetensors header is `header` (JSON) followed by `data`.
    static func rawShard(header: String, data: [UInt8] = []) throws -> [UInt8] {
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var content: [UInt8] = []
        for i in 0..<8 { content.append(UInt8((h.count >> (8 * i)) & 0xFF)) }
        return try Zstd.compress(content + h + data)
    }

    static let metadataJSON = #""__metadata__":{"format":"llamaprobe-shard","version":"1","model":"test-model","labels":"[\"a\",\"b\",\"c\"]","template":"raw","suffix":"","system_prompt":"","layers":"[0,1]","with_embeddings":"false","dtype":"F32","d_model":"8"}"#

    @Test("a shard tensor shape whose element count overflows is a clean error in train and verify")
    func overflowingShape() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let header = "{" + Self.metadataJSON + #","resid_post":{"dtype":"F32","shape":[4611686018427387904,2,8],"data_offsets":[0,0]},"label":{"dtype":"I64","shape":[8],"data_offsets":[0,64]},"row":{"dtype":"I64","shape":[8],"data_offsets":[64,128]},"n_tokens":{"dtype":"I32","shape":[8],"data_offsets":[128,160]}}"#
        try Self.replaceShard(s, 2, with: try Self.rawShard(header: header, data: [UInt8](repeating: 0, count: 160)))
        let message = "tensor 'resid_post': shape [4611686018427387904, 2, 8] overflows"
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [Self.shardFileName(s, 2), message])
        let v = try ShardVerification.run(directory: s)
        #expect(v.problems.contains { $0.contains(Self.shardFileName(s, 2)) && $0.contains(message) }, "\(v.problems)")
        // Metadata in a shard is validated as in a manifest.
        let bad = "{" + Self.metadataJSON.replacingOccurrences(of: #""d_model":"8""#, with: #""d_model":"-8""#) + #","resid_post":{"dtype":"F32","shape":[0,2,8],"data_offsets":[0,0]},"label":{"dtype":"I64","shape":[0],"data_offsets":[0,0]},"row":{"dtype":"I64","shape":[0],"data_offsets":[0,0]},"n_tokens":{"dtype":"I32","shape":[0],"data_offsets":[0,0]}}"#
        try Data(try Self.rawShard(header: bad)).write(to: URL(fileURLWithPath: dir + "/one.zst"))
        Self.expectError([dir + "/one.zst", "shard metadata: 'd_model' -8 is not in 1...1048576"]) { _ = try Shard.read(path: dir + "/one.zst") }
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: row 6: FIFOs and directories where files are expected

    @Test("a FIFO or a directory as a shard, manifest or dataset: a clear error, no hang")
    func fifos() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let shard = Self.shardFileName(s, 1)
        try FileManager.default.removeItem(atPath: shard)
        #expect(mkfifo(shard, 0o644) == 0)
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [shard, "cannot read: is a FIFO (named pipe), not a regular file"])
        let v = try ShardVerification.run(directory: s)
        #expect(v.problems.contains("\(Shard.fileName(worker: 0, index: 1)): is a FIFO (named pipe), not a regular file"), "\(v.problems)")
        Self.expectError([shard, "is a FIFO"]) { _ = try Shard.read(path: shard) }
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.createDirectory(atPath: shard, withIntermediateDirectories: false)
        TrainBadInputTests.expectFailure(TrainBadInputTests.options(dir, [s]), [shard, "is a directory, not a regular file"])

        let m = Self.manifestPath(s)
        try FileManager.default.removeItem(atPath: m)
        #expect(mkfifo(m, 0o644) == 0)
        Self.expectError([m, "cannot read the manifest: is a FIFO (named pipe), not a regular file"]) { _ = try ShardDirectory(path: s) }

        let data = dir + "/data.csv"
        #expect(mkfifo(data, 0o644) == 0)
        Self.expectError([data, "cannot read: is a FIFO (named pipe), not a regular file"]) { _ = try Dataset(path: data) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: row 7: resume never trusts the manifest; one process per worker and directory

    @Test("resume checks every listed shard: a deleted or corrupt one is redone from there, and said so")
    func resumeChecksShards() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let meta = try Manifest.read(path: Self.manifestPath(s)).metadata
        func reopen() throws -> ShardWriter {
            try ShardWriter(directory: s, worker: 0, workers: 1, metadata: meta, rowsPerShard: 8, config: ["test": "1", "rows_total": "30"])
        }
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.shardFileName(s, 2))))
        bytes[bytes.count / 2] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: Self.shardFileName(s, 2)))
        var first: ShardWriter? = try reopen()
        #expect(first?.resumeNotes == ["\(Self.shardFileName(s, 2)) does not match its recorded sha256 (corrupt or modified): redoing rows from 16 (2 shards dropped from the manifest)"])
        #expect(first?.lastCompletedRow == 15 && first?.manifest.shards.count == 2)
        first = nil   // releases its lock
        try FileManager.default.removeItem(atPath: Self.shardFileName(s, 1))
        let w = try reopen()
        #expect(w.resumeNotes == ["\(Self.shardFileName(s, 1)) does not exist: redoing rows from 8 (3 shards dropped from the manifest)"])
        #expect(w.lastCompletedRow == 7)
        // Redo the rows: the directory verifies complete again.
        let values = (0..<(30 * 16)).map { Float(sin(Double($0))) }
        try values.withUnsafeBufferPointer { v in
            for i in 8..<30 { try w.append(row: i, label: i % 3, nTokens: 5, activations: v.baseAddress! + i * 16) }
        }
        try w.finish()
        let v = try ShardVerification.run(directory: s)
        #expect(v.isComplete && v.rows == 30, "\(v.problems)")
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test("a second writer of the same worker and directory fails naming the process that holds the lock")
    func lock() throws {
        let dir = scratchDirectory()
        let s = try Self.shardDirectory(dir)
        let meta = try Manifest.read(path: Self.manifestPath(s)).metadata
        let held = try ShardWriter.lock(directory: s, worker: 0)
        Self.expectError([s + "/.lock-00000", "another run writing worker 0's shards into \(s) is already running in process \(getpid())"]) {
            _ = try ShardWriter(directory: s, worker: 0, workers: 1, metadata: meta, rowsPerShard: 8, config: ["test": "1", "rows_total": "30"])
        }
        // Released (as on the holder's death), the worker resumes.
        held.release()
        let w = try ShardWriter(directory: s, worker: 0, workers: 1, metadata: meta, rowsPerShard: 8, config: ["test": "1", "rows_total": "30"])
        #expect(w.lastCompletedRow == 29)
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: row 8: train --overwrite swaps whole directories; leftovers of killed runs are removed

    @Test("train --overwrite replaces the whole directory and removes a dead run's temporary directory")
    func overwriteSwap() throws {
        let dir = scratchDirectory()
        let s = try TrainBadInputTests.shards(dir)
        var o = TrainBadInputTests.options(dir, [s])
        _ = try TrainJob.run(o)
        let out = o.outDirectory
        // A file only the old result has, and the temporary directory of a run killed with SIGKILL
        // (a pid that cannot exist: above the kernel's pid_max of 2^22).
        try "old".write(toFile: out + "/old-only.txt", atomically: true, encoding: .utf8)
        let dead = dir + "/.out.tmp-\((1 << 22) + 12345).d"
        try FileManager.default.createDirectory(atPath: dead, withIntermediateDirectories: false)
        try "partial".write(toFile: dead + "/probes.safetensors", atomically: true, encoding: .utf8)
        o.overwrite = true
        o.config.epochs = 3
        let r = try TrainJob.run(o)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: out))
        #expect(files == Set(r.files), "a mix of old and new: \(files.subtracting(r.files))")
        #expect(!FileManager.default.fileExists(atPath: dead), "the dead run's temporary directory is left")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        // the install step alone: a non-empty directory exchanged whole
        let tmp = try TrainJob.temporaryDirectory(for: dir + "/x")
        try "new".write(toFile: tmp + "/a", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/x", withIntermediateDirectories: false)
        try "old".write(toFile: dir + "/x/b", atomically: true, encoding: .utf8)
        try TrainJob.install(tmp, at: dir + "/x", files: ["a"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/x") == ["a"])
        #expect(!FileManager.default.fileExists(atPath: tmp))
        try? FileManager.default.removeItem(atPath: dir)
    }
}

// MARK: row 3: .pth zip + pickle; row 5: shards import

extension HostileFileTests {
    /// A torch.save zip of one [2, 3] weight whose pickle bytes went through `mutate`.
    static func checkpoint(_ mutate: ([UInt8]) -> [UInt8]) -> [UInt8] {
        let t = TorchTensor(name: "classifier.0.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let pickle = mutate(Pickle.stateDict([t], modules: TorchCheckpoint.probeModules))
        return Zip.stored([("archive/data.pkl", pickle), ("archive/data/0", t.values.withUnsafeBytes { Array($0) })], alignment: 64)
    }

    /// Replaces the one occurrence of `a` in `b` with `c`.
    static func replacing(_ b: [UInt8], _ a: [UInt8], _ c: [UInt8]) -> [UInt8] {
        guard let i = (0...(b.count - a.count)).first(where: { Array(b[$0..<($0 + a.count)]) == a }) else {
            Issue.record("pattern not found"); return b
        }
        return Array(b[..<i]) + c + Array(b[(i + a.count)...])
    }

    // BINPERSID, storage offset BININT1 0, shape (2, 3) as BININT1 BININT1 TUPLE2
    static let offsetAndShape: [UInt8] = [0x51, 0x4B, 0x00, 0x4B, 0x02, 0x4B, 0x03, 0x86]

    @Test(".pth: negative and huge storage offsets, shapes of 2^62, 100,000-deep pickles, records out of bounds")
    func hostileCheckpoints() throws {
        // The unmodified file reads.
        #expect(try TorchCheckpoint.decode(Self.checkpoint { $0 }, name: "p.pth").first?.values == [1, 2, 3, 4, 5, 6])
        for (offset, text) in [([0x4A, 0x00, 0x00, 0x00, 0x80] as [UInt8], "-2147483648"), ([0x4A, 0xFF, 0xFF, 0xFF, 0xFF], "-1")] {
            let b = Self.checkpoint { Self.replacing($0, Self.offsetAndShape, [0x51] + offset + [0x4B, 0x02, 0x4B, 0x03, 0x86]) }
            Self.expectError(["p.pth: tensor 'classifier.0.weight': storage offset \(text) is negative"]) { _ = try TorchCheckpoint.decode(b, name: "p.pth") }
        }
        // offset 2^62 (LONG1): far past the storage, and offset + count would wrap
        let far = Self.checkpoint { Self.replacing($0, Self.offsetAndShape, [0x51, 0x8A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x4B, 0x02, 0x4B, 0x03, 0x86]) }
        Self.expectError(["shape [2, 3] at storage offset 4611686018427387904 needs 6 floats, the storage data/0 holds 6"]) { _ = try TorchCheckpoint.decode(far, name: "p.pth") }
        // shape [2^62, 4]: the element count overflows; [2^62, 1]: more than the storage
        let huge = Self.checkpoint { Self.replacing($0, Self.offsetAndShape, [0x51, 0x4B, 0x00, 0x8A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x4B, 0x04, 0x86]) }
        Self.expectError(["tensor 'classifier.0.weight': shape [4611686018427387904, 4] has more elements than memory can address"]) { _ = try TorchCheckpoint.decode(huge, name: "p.pth") }
        let long = Self.checkpoint { Self.replacing($0, Self.offsetAndShape, [0x51, 0x4B, 0x00, 0x8A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x4B, 0x01, 0x86]) }
        Self.expectError(["needs 4611686018427387904 floats, the storage data/0 holds 6"]) { _ = try TorchCheckpoint.decode(long, name: "p.pth") }
        let negative = Self.checkpoint { Self.replacing($0, Self.offsetAndShape, [0x51, 0x4B, 0x00, 0x4A, 0xFE, 0xFF, 0xFF, 0xFF, 0x4B, 0x03, 0x86]) }
        Self.expectError(["shape [-2, 3] has a negative dimension"]) { _ = try TorchCheckpoint.decode(negative, name: "p.pth") }

        // 100,000 nested tuples: refused at depth 64 (releasing such a value used to overflow the stack).
        let deep: [UInt8] = [0x80, 0x02, 0x29] + [UInt8](repeating: 0x85, count: 100_000) + [0x2E]
        let zip = Zip.stored([("archive/data.pkl", deep)], alignment: 64)
        Self.expectError(["deep.pth: data.pkl: values nested more than 64 deep"]) { _ = try TorchCheckpoint.decode(zip, name: "deep.pth") }
        let marks: [UInt8] = [0x80, 0x02] + [UInt8](repeating: 0x28, count: 100_000) + [UInt8](repeating: 0x74, count: 100_000) + [0x2E]
        Self.expectError(["data.pkl: values nested more than 64 deep"]) {
            _ = try TorchCheckpoint.decode(Zip.stored([("archive/data.pkl", marks)], alignment: 64), name: "l.pth")
        }
        Self.expectError(["data.pkl: GET of memo 7, which was never PUT"]) {
            _ = try TorchCheckpoint.decode(Zip.stored([("archive/data.pkl", [0x80, 0x02, 0x68, 0x07, 0x2E])], alignment: 64), name: "m.pth")
        }

        // Many tensors reading one storage: bounded by the file's size, not multiplied.
        let ts = (0..<3).map { TorchTensor(name: "t\($0)", shape: [4096], values: [Float](repeating: 1, count: 4096)) }
        var shared = Pickle.stateDict(ts, modules: [])
        for k in ["1", "2"] { shared = Self.replacing(shared, [0x58, 1, 0, 0, 0] + Array(k.utf8), [0x58, 1, 0, 0, 0, 0x30]) }
        let sharedZip = Zip.stored([("archive/data.pkl", shared), ("archive/data/0", ts[0].values.withUnsafeBytes { Array($0) })], alignment: 64)
        Self.expectError(["s.pth: tensor 't2': the tensors so far hold 12288 floats, more than twice the", "storages referenced again and again"]) {
            _ = try TorchCheckpoint.decode(sharedZip, name: "s.pth")
        }
        // 200,000 one-item APPENDS: quadratic copying, stopped by the copy budget.
        var appends: [UInt8] = [0x80, 0x02, 0x5D]
        for _ in 0..<200_000 { appends += [0x28, 0x4B, 0x00, 0x65] }
        let t0 = Date()
        Self.expectError(["a.pth: data.pkl: more than 16777216 container items built: not a state_dict"]) {
            _ = try TorchCheckpoint.decode(Zip.stored([("archive/data.pkl", appends + [0x2E])], alignment: 64), name: "a.pth")
        }
        #expect(Date().timeIntervalSince(t0) < 5)

        // A central directory entry whose size runs past the end of the file.
        var b = Self.checkpoint { $0 }
        let cd = (0..<(b.count - 4)).first { b[$0] == 0x50 && b[$0 + 1] == 0x4B && b[$0 + 2] == 0x01 && b[$0 + 3] == 0x02 }!
        b[cd + 20] = 0xFF; b[cd + 21] = 0xFF; b[cd + 22] = 0xFF; b[cd + 23] = 0x7F
        Self.expectError(["p.pth: record archive/data.pkl runs past the end of the file"]) { _ = try TorchCheckpoint.decode(b, name: "p.pth") }
    }

    /// A .npy file: `header` is the dict text, `data` follows.
    static func npy(_ path: String, header: String, data: [UInt8]) throws {
        var h = Array(header.utf8)
        while (10 + h.count + 1) % 64 != 0 { h.append(0x20) }
        h.append(0x0A)
        let bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(h.count & 0xFF), UInt8(h.count >> 8)] + h + data
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func int64s(_ v: [Int64]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

    @Test("shards import: labels of 10^12 and 2^63-1, .npy shapes that overflow or lie")
    func hostileImports() throws {
        let dir = scratchDirectory()
        let acts = dir + "/acts.npy", labels = dir + "/labels.npy"
        try Self.npy(acts, header: "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 4), }",
                     data: [Float](repeating: 0.5, count: 8).withUnsafeBytes { Array($0) })
        for big in [Int64(1_000_000_000_000), Int64.max] {
            try Self.npy(labels, header: "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", data: Self.int64s([0, big]))
            var o = ImportOptions(activations: acts, out: dir + "/out")
            o.labelsPath = labels
            Self.expectError([acts, "row 1: label \(big) is not a class id below 65536"]) { _ = try ShardImport.run(o) }
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        // A shape whose element count (or byte size) overflows, and one larger than the data present.
        for (shape, message) in [("(4611686018427387904, 4, 8)", "shape [4611686018427387904, 4, 8] has more elements than memory can address"),
                                 ("(2305843009213693952, 1, 1)", "truncated: shape [2305843009213693952, 1, 1] needs more bytes of data, the file has 32"),
                                 ("(100, 2, 4)", "truncated: shape [100, 2, 4] needs 3200 bytes of data, the file has 32")] {
            try Self.npy(acts, header: "{'descr': '<f4', 'fortran_order': False, 'shape': \(shape), }",
                         data: [Float](repeating: 0.5, count: 8).withUnsafeBytes { Array($0) })
            Self.expectError([acts, message]) { _ = try NpyArray(path: acts) }
        }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
