import Foundation
@testable import Probe
import Quant
import Formats
import Testing

/// The streaming shard reader on both data orders: shards written now (labels first, so the label scan stops
/// before the activations) and shards written with resid_post first.
@Suite struct ShardStreamTests {
    @Test("labels-only reads stop before resid_post when it comes last, and read older shards (resid_post first) the same")
    func labelsFirstAndOld() throws {
        let dir = scratchDirectory()
        let meta = ShardMetadata(model: "test", labels: ["a", "b", "c"], template: "raw", suffix: "", systemPrompt: "",
                                 layers: [0, 1], withEmbeddings: false, dtype: .f32, dModel: 8)
        let n = 5
        let resid = (0..<(n * 2 * 8)).map { Float($0) * 0.25 - 3 }
        let labels: [Int64] = [2, 0, 1, 1, 0], rows: [Int64] = [10, 11, 12, 13, 14], tokens: [Int32] = [7, 8, 9, 10, 11]
        let current = dir + "/current.safetensors.zst", old = dir + "/old.safetensors.zst"
        try Data(try resid.withUnsafeBytes { try Shard.encode(metadata: meta, activations: [$0], labels: labels, rows: rows, nTokens: tokens) })
            .write(to: URL(fileURLWithPath: current))
        let oldContent = resid.withUnsafeBytes { r in labels.withUnsafeBytes { l in rows.withUnsafeBytes { w in tokens.withUnsafeBytes { t in
            SafeTensors.encode([(.init("resid_post", .f32, [n, 2, 8]), r), (.init("label", .i64, [n]), l),
                                (.init("row", .i64, [n]), w), (.init("n_tokens", .i32, [n]), t)], metadata: meta.stringMap)
        } } } }
        try Data(try Zstd.compress(oldContent, level: 3)).write(to: URL(fileURLWithPath: old))

        for path in [current, old] {
            var seen = [Float]()
            let full = try ShardStream.read(path: path, rowSink: { _, p in
                seen += Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: Float.self), count: 16))
            })
            #expect(seen == resid && full.labels == labels && full.rows == rows, "\(path)")
            var rowsSeen = 0
            let scan = try ShardStream.read(path: path, labelsOnly: true, rowSink: { _, _ in rowsSeen += 1 })
            #expect(scan.labels == labels && scan.rows == rows && scan.nTokens == tokens.map(Int64.init), "\(path)")
            // the current layout never reaches the activations in a labels-only read; the old one passes them
            #expect(rowsSeen == (path == current ? 0 : n), "\(path): \(rowsSeen) rows decoded")
        }
        // A corrupted activation byte in a current shard: the full read fails (checksum), the label scan does not need it.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: current)))
        bytes[bytes.count - 12] ^= 0x55
        try Data(bytes).write(to: URL(fileURLWithPath: current))
        #expect(throws: ShardError.self) { _ = try ShardStream.read(path: current, rowSink: { _, _ in }) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
