// libFuzzer driver for the file readers: `make fuzz` (or scripts/fuzz.sh TARGET SECONDS) builds this with
// `swift build --sanitize fuzzer --sanitize address` and runs one target, chosen with LLAMAPROBE_FUZZ_TARGET,
// on its corpus. libFuzzer provides `main`; this file only exports its two entry points.
import Foundation
import FuzzTargets

nonisolated(unsafe) var selected: FuzzTargets.Target?
nonisolated(unsafe) var scratch = ""

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    let name = ProcessInfo.processInfo.environment["LLAMAPROBE_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTargets.target(named: name) else {
        let names = FuzzTargets.all.map(\.name).joined(separator: ", ")
        FileHandle.standardError.write(Data("set LLAMAPROBE_FUZZ_TARGET to one of: \(names)\n".utf8))
        exit(2)
    }
    selected = t
    // LLAMAPROBE_FUZZ_SEEDS=DIR: write the target's seed files (valid files the project writes) into DIR.
    if let dir = ProcessInfo.processInfo.environment["LLAMAPROBE_FUZZ_SEEDS"] {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (i, s) in ((try? FuzzTargets.seeds(name)) ?? []).enumerated() {
            FileManager.default.createFile(atPath: dir + "/seed-\(i)", contents: Data(s))
        }
    }
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    scratch = base + "/llamaprobe-fuzz-\(getpid())"
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard let t = selected else { return 0 }
    FuzzTargets.run(t, bytes: UnsafeRawBufferPointer(start: data, count: size), scratch: scratch)
    return 0
}
