import Foundation
import Formats

/// `llamaprobe shards verify`: checksums, configuration agreement, missing and duplicate rows.
public struct ShardVerification: Sendable {
    public var shards = 0
    public var rows = 0
    public var expectedRows = 0
    public var skippedRows = 0
    public var problems: [String] = []
    public var isComplete: Bool { problems.isEmpty }

    /// Reads every shard of every worker (checksum, decode, rows) and compares with the rows the
    /// configuration implies: every data row of the input once, except rows skipped with a reason.
    public static func run(directory: String) throws -> ShardVerification {
        let dir = try ShardDirectory(path: directory)   // throws when workers' configurations disagree
        var v = ShardVerification()
        let workers = dir.manifests[0].workers
        let total = dir.manifests[0].rowsTotal ?? -1
        var seen = [Int: Int]()   // row -> occurrences
        for m in dir.manifests {
            if !m.complete { v.problems.append("worker \(m.worker)/\(workers) has not finished (its manifest is not complete)") }
            for s in m.shards {
                v.shards += 1
                let path = directory + "/" + s.file   // a plain shard name: Manifest.validate
                do {
                    let (size, hex) = try SHA256.file(path, expectedSize: s.bytes)
                    if size != s.bytes || hex != s.sha256 {
                        v.problems.append("\(s.file): checksum mismatch (corrupt or modified)"); continue
                    }
                } catch let e as FileError {
                    let missing = e.reason == "does not exist"
                    v.problems.append("\(s.file): \(missing ? "listed in \(Manifest.fileName(worker: m.worker)) but missing" : e.reason)"); continue
                }
                do {
                    // Streamed: memory follows the data, never the sizes the file declares.
                    var sameMetadata = true
                    let c = try ShardStream.read(path: path, hook: nil, header: { meta, _ in sameMetadata = meta == dir.metadata }, rowSink: { _, _ in })
                    guard sameMetadata else { v.problems.append("\(s.file): metadata differs from the manifest"); continue }
                    if c.count != s.count { v.problems.append("\(s.file): \(c.count) rows, the manifest says \(s.count)") }
                    for r in c.rows {
                        seen[Int(r), default: 0] += 1
                        if Int(r) % workers != m.worker { v.problems.append("\(s.file): row \(r) does not belong to worker \(m.worker)/\(workers)") }
                    }
                    v.rows += c.count
                } catch {
                    v.problems.append(error.localizedDescription)
                }
            }
        }
        let skipped = Set(dir.manifests.flatMap { $0.skipped.map(\.row) })
        v.skippedRows = skipped.count
        let present = Set(dir.manifests.map(\.worker))
        for w in 0..<workers where !present.contains(w) { v.problems.append("no manifest from worker \(w)/\(workers)") }
        let dups = seen.filter { $0.value > 1 }.keys.sorted()
        if !dups.isEmpty { v.problems.append("\(dups.count) duplicate rows: \(Self.list(dups))") }
        if total >= 0 {
            v.expectedRows = total - skipped.count
            // Counted, and the first 20 listed, in time bounded by the rows present (rows_total may be large).
            let accounted = Set(seen.keys).union(skipped).filter { (0..<total).contains($0) }.count
            let missingCount = total - accounted
            if missingCount > 0 {
                var first: [Int] = []
                var r = 0
                while first.count < min(20, missingCount) && r < total {
                    if seen[r] == nil && !skipped.contains(r) { first.append(r) }
                    r += 1
                }
                v.problems.append("\(missingCount) missing rows: \(Self.list(first, total: missingCount))")
            }
        }
        return v
    }

    static func list(_ rows: [Int], total: Int? = nil) -> String {
        rows.prefix(20).map(String.init).joined(separator: ", ") + ((total ?? rows.count) > 20 ? ", …" : "")
    }
}
