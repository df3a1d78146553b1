import Foundation

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
        let total = Int(dir.manifests[0].config["rows_total"] ?? "") ?? -1
        var seen = [Int: Int]()   // row -> occurrences
        for m in dir.manifests {
            if !m.complete { v.problems.append("worker \(m.worker)/\(workers) has not finished (its manifest is not complete)") }
            for s in m.shards {
                v.shards += 1
                let path = directory + "/" + s.file
                guard let data = FileManager.default.contents(atPath: path) else {
                    v.problems.append("\(s.file): listed in \(Manifest.fileName(worker: m.worker)) but missing"); continue
                }
                let bytes = [UInt8](data)
                if bytes.count != s.bytes || SHA256.hex(bytes) != s.sha256 {
                    v.problems.append("\(s.file): checksum mismatch (corrupt or modified)"); continue
                }
                do {
                    let b = try Shard.decode(bytes, name: path)
                    guard b.metadata == dir.metadata else { v.problems.append("\(s.file): metadata differs from the manifest"); continue }
                    if b.count != s.count { v.problems.append("\(s.file): \(b.count) rows, the manifest says \(s.count)") }
                    for r in b.rows {
                        seen[Int(r), default: 0] += 1
                        if Int(r) % workers != m.worker { v.problems.append("\(s.file): row \(r) does not belong to worker \(m.worker)/\(workers)") }
                    }
                    v.rows += b.count
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
            let missing = (0..<total).filter { seen[$0] == nil && !skipped.contains($0) }
            if !missing.isEmpty { v.problems.append("\(missing.count) missing rows: \(Self.list(missing))") }
        }
        return v
    }

    static func list(_ rows: [Int]) -> String {
        rows.prefix(20).map(String.init).joined(separator: ", ") + (rows.count > 20 ? ", …" : "")
    }
}
