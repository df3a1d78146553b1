import Foundation
import Testing
import Formats
import FuzzTargets

/// Every reader's fuzz target on its seeds (valid files must be accepted) and on every input the fuzzer has
/// found a crash, hang or memory bomb with (Fuzz/regressions/TARGET/*: each must now end in an error or be
/// accepted, never crash). `make fuzz` finds new ones; a finding is copied into Fuzz/regressions.
@Suite struct FuzzReplayTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let scratch = NSTemporaryDirectory() + "llamaprobe-fuzz-replay-\(getpid())"

    @Test("every fuzz target accepts the valid seed files the project writes", arguments: FuzzTargets.all.map(\.name))
    func seeds(name: String) throws {
        let t = try #require(FuzzTargets.target(named: name))
        let seeds = try FuzzTargets.seeds(name)
        #expect(!seeds.isEmpty, "target \(name) has no seeds")
        for (i, s) in seeds.enumerated() {
            let error = s.withUnsafeBytes { FuzzTargets.run(t, bytes: $0, scratch: Self.scratch) }
            // The manifest's seed lists a shard that is not in its directory: verify reports it, and ShardDirectory
            // and Manifest.read must accept the file itself.
            #expect(error == nil, "seed \(i) of \(name): \(error.map { String(describing: $0.localizedDescription) } ?? "")")
        }
    }

    @Test("every input the fuzzer found a problem with now ends in an error or is accepted")
    func regressions() throws {
        let dir = Self.root + "/Fuzz/regressions"
        var replayed = 0
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir))?.sorted() ?? [] where Files.isDirectory(dir + "/" + name) {
            let t = try #require(FuzzTargets.target(named: name), "Fuzz/regressions/\(name) names no fuzz target")
            for file in try FileManager.default.contentsOfDirectory(atPath: dir + "/" + name).sorted() where !file.hasPrefix(".") {
                let bytes = try Files.read(dir + "/" + name + "/" + file)
                let start = Date()
                _ = bytes.withUnsafeBytes { FuzzTargets.run(t, bytes: $0, scratch: Self.scratch) }
                #expect(Date().timeIntervalSince(start) < 10, "Fuzz/regressions/\(name)/\(file) took more than 10 s")
                replayed += 1
            }
        }
        print("fuzz regressions replayed: \(replayed)")
    }
}
