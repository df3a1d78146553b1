import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats
import Testing

enum Paths {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures")
    static let repo = fixtures.deletingLastPathComponent().deletingLastPathComponent()
    static func model(_ name: String) -> String { fixtures.appendingPathComponent("models/\(name)").path }
    static var llamaprobe: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("llamaprobe").path
    }
}

func tempDir(_ name: String = #function) -> String {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("lp-extract-\(name.filter(\.isLetter))-\(UUID().uuidString.prefix(8))").path
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func writeFile(_ path: String, _ text: String) { try! text.write(toFile: path, atomically: true, encoding: .utf8) }

/// A small labelled CSV drawn from the demo data (varied lengths), plus one row with quotes and a newline.
func demoCSV(rows: Int) -> String {
    let d = try! Dataset(path: Paths.repo.appendingPathComponent("data/demo/emotions.csv").path)
    var out = "message,label\n"
    for case .success(let r) in d.rows.prefix(rows) {
        guard case .message(let m) = r.content else { continue }
        out += "\"" + m.replacingOccurrences(of: "\"", with: "\"\"") + "\"," + r.label + "\n"
    }
    return out
}

@Suite struct DatasetTests {
    @Test func csvQuotingNewlinesBOMAndCRLF() throws {
        let dir = tempDir()
        let p = dir + "/d.csv"
        try Data([0xEF, 0xBB, 0xBF] + Array("id,message,label\r\n1,\"Hello, \"\"world\"\"\nsecond line\",happy\r\n2,plain text,sad\n3,,neutral\n4,\"x\",\n".utf8)).write(to: URL(fileURLWithPath: p))
        let d = try Dataset(path: p)
        #expect(d.rows.count == 4)
        let r0 = try d.rows[0].get()
        #expect(r0.content == .message("Hello, \"world\"\nsecond line") && r0.label == "happy" && r0.line == 2 && r0.index == 0)
        #expect(try d.rows[1].get().line == 4)
        guard case .failure(let e) = d.rows[2] else { Issue.record("empty message accepted"); return }
        #expect(e.row == 2 && e.reason.contains("empty message") && e.line == 5)
        guard case .failure(let e3) = d.rows[3] else { Issue.record("empty label accepted"); return }
        #expect(e3.reason.contains("empty label"))
    }

    @Test func csvErrorsNameFileAndLine() throws {
        let dir = tempDir()
        for (text, expect) in [("message,label\n\"never closed,happy\n", "never closed"),
                               ("message,label\nbad \"quote\",happy\n", "quote inside"),
                               ("text,label\nhi,happy\n", "no 'message' column"),
                               ("", "empty")] {
            let p = dir + "/e.csv"
            writeFile(p, text)
            do { _ = try Dataset(path: p); Issue.record("accepted: \(text)") } catch let e as DatasetError {
                #expect(e.file == p && e.reason.contains(expect), "\(e)")
            }
        }
        let p = dir + "/u.csv"
        try Data(Array("message,label\n".utf8) + [0x66, 0xFF, 0x66] + Array(",happy\nok,sad,extra\n".utf8)).write(to: URL(fileURLWithPath: p))
        let d = try Dataset(path: p)
        guard case .failure(let a) = d.rows[0], case .failure(let b) = d.rows[1] else { Issue.record("bad rows accepted"); return }
        #expect(a.reason == "invalid UTF-8" && a.line == 2)
        #expect(b.reason.contains("3 fields"))
    }

    @Test func jsonl() throws {
        let p = tempDir() + "/d.jsonl"
        writeFile(p, """
        {"message": "hi there", "label": "happy"}
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "label": "sad"}

        {"message": "no label"}
        not json
        {"label": "sad"}
        """)
        let d = try Dataset(path: p)
        #expect(d.rows.count == 5)
        #expect(try d.rows[0].get().content == .message("hi there"))
        guard case .conversation(let t) = try d.rows[1].get().content else { Issue.record("not a conversation"); return }
        #expect(t.map(\.content) == ["a", "b", "c"])
        for (i, why) in [(2, "label"), (3, "unparsable"), (4, "needs 'message'")] {
            guard case .failure(let e) = d.rows[i] else { Issue.record("row \(i) accepted"); continue }
            #expect(e.reason.contains(why) && e.row == i, "\(e)")
        }
        #expect(try d.rows[0].get().line == 1 && (try d.rows[1].get().line) == 2)
    }
}

/// Extraction of `data` into `out` with the gqa-bf16 fixture model, 7 rows per shard, one thread.
func fixtureConfig(_ data: String, _ out: String) -> ExtractionConfig {
    var c = ExtractionConfig(modelPath: ExtractionTests.model, dataPath: data, outDir: out)
    c.rowsPerShard = 7
    c.threads = 1
    return c
}

@Suite struct ExtractionTests {
    static let model = Paths.model("gqa-bf16")

    func config(_ data: String, _ out: String) -> ExtractionConfig { fixtureConfig(data, out) }

    @Test("shards hold exactly what the forward pass gives, with labels, rows and token counts")
    func contents() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 20))
        var cfg = config(dir + "/d.csv", dir + "/out")
        cfg.withEmbeddings = true
        let s = try Extractor.run(cfg)
        #expect(s.rows == 20 && s.skipped == 0)
        let shards = try ShardDirectory(path: dir + "/out")
        #expect(shards.shardPaths.count == 3 && shards.totalRows == 20)
        let m = try LoadedModel.load(path: Self.model, threads: 1)
        let data = try Dataset(path: dir + "/d.csv")
        var seen = 0
        for path in shards.shardPaths {
            let b = try Shard.read(path: path)
            #expect(b.metadata.layers == [0, 1, 2, 3] && b.metadata.withEmbeddings && b.metadata.dModel == 64)
            for i in 0..<b.count {
                let row = try data.rows[Int(b.rows[i])].get()
                guard case .message(let text) = row.content else { continue }
                let ids = try m.tokenizer.encode(try PromptRenderer().render(text))
                let r = try m.model.capture(ids, CaptureOptions(embeddings: true))
                let stored = Array(b.residPost[(i * 4 * 64)..<((i + 1) * 4 * 64)])
                #expect(stored == r.embedding! + r.residPost, "row \(b.rows[i])")
                #expect(b.labels[i] == Int64(defaultEmotionLabels.firstIndex(of: row.label)!))
                #expect(Int(b.nTokens[i]) == ids.count)
                seen += 1
            }
        }
        #expect(seen == 20)
    }

    @Test("f16 and bf16 shards store the rounded f32 values; long prompts keep their readout suffix")
    func dtypesAndTruncation() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 6))
        var f32 = config(dir + "/d.csv", dir + "/f32")
        f32.maxTokens = 40
        _ = try Extractor.run(f32)
        let ref = try Shard.read(path: try ShardDirectory(path: dir + "/f32").shardPaths[0])
        for (dt, round) in [(ActivationType.f16, { (x: Float) in f16ToFloat(floatToF16(x)) }), (.bf16, { bf16ToFloat(floatToBF16($0)) })] {
            var c = f32
            c.dtype = dt
            c.outDir = dir + "/" + dt.rawValue
            _ = try Extractor.run(c)
            let b = try Shard.read(path: try ShardDirectory(path: c.outDir).shardPaths[0])
            #expect(b.metadata.dtype == dt)
            #expect(b.residPost == ref.residPost.map(round))
        }
        // Truncated rows: at most max tokens, BOS first, the suffix's tokens last, recorded in the manifest.
        let tok = try Tokenizer(path: Self.model + "/tokenizer.model")
        let suffixIDs = try tok.encode(PromptTemplate.defaultSuffix, addBOS: false)
        let manifest = try Manifest.read(path: dir + "/f32/" + Manifest.fileName(worker: 0))
        let truncated = manifest.shards.flatMap(\.truncated)
        #expect(!truncated.isEmpty)
        #expect(ref.nTokens.allSatisfy { $0 <= 40 })
        let data = try Dataset(path: dir + "/d.csv")
        for row in truncated {
            guard case .message(let text) = try data.rows[row].get().content else { continue }
            var ids = try tok.encode(try PromptRenderer().render(text))
            ids = [ids[0]] + ids[(ids.count - 39)...]
            #expect(Array(ids.suffix(suffixIDs.count - 1)) == Array(suffixIDs.suffix(suffixIDs.count - 1)))
            let m = try LoadedModel.load(path: Self.model, threads: 1)
            let i = ref.rows.firstIndex(of: Int64(row))!
            let r = try m.model.capture(ids, CaptureOptions())
            #expect(Array(ref.residPost[(i * 3 * 64)..<((i + 1) * 3 * 64)]) == r.residPost)
        }
    }

    @Test("bad rows: an error naming file and row, or skipped and recorded with --on-error skip")
    func badRows() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", "message,label\nfine,happy\n,sad\nalso fine,angry\nok,neutral\n")
        var cfg = config(dir + "/d.csv", dir + "/out")
        cfg.labels = defaultEmotionLabels
        do { _ = try Extractor.run(cfg); Issue.record("bad rows accepted") } catch let e as DatasetError {
            #expect(e.file == dir + "/d.csv" && e.row == 1 && e.line == 3, "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"), "something was written before the error")
        cfg.onError = .skip
        let s = try Extractor.run(cfg)
        #expect(s.rows == 2 && s.skipped == 2)
        let m = try Manifest.read(path: dir + "/out/" + Manifest.fileName(worker: 0))
        #expect(m.skipped.map(\.row) == [1, 2] && m.skipped[1].reason.contains("unknown label 'angry'"))
        let v = try ShardVerification.run(directory: dir + "/out")
        #expect(v.isComplete && v.rows == 2 && v.expectedRows == 2, "\(v.problems)")
        // Without --labels, labels outside the seven states are the classes, sorted (issue 10: not a refusal).
        var noLabels = config(dir + "/d.csv", dir + "/out2")
        noLabels.onError = .skip
        let s2 = try Extractor.run(noLabels)
        #expect(s2.rows == 3 && s2.skipped == 1)
        #expect(try Manifest.read(path: dir + "/out2/" + Manifest.fileName(worker: 0)).metadata.labels == ["angry", "happy", "neutral"])
    }

    @Test("a different configuration on the same directory is refused, naming what differs")
    func configMismatch() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 5))
        let cfg = config(dir + "/d.csv", dir + "/out")
        _ = try Extractor.run(cfg)
        var other = cfg
        other.renderer = PromptRenderer(suffix: " The user feels")
        do { _ = try Extractor.run(other); Issue.record("accepted a different suffix") } catch {
            #expect(error.localizedDescription.contains("suffix"), "\(error)")
        }
        var otherModel = cfg
        otherModel.modelPath = Paths.model("mha-f32")
        do { _ = try Extractor.run(otherModel); Issue.record("accepted a different model") } catch {
            #expect(error.localizedDescription.contains("different configuration"), "\(error)")
        }
        // The same command again: nothing to do, nothing changes.
        let before = try snapshot(dir + "/out")
        let again = try Extractor.run(cfg)
        #expect(again.rows == 0 && again.rowsAlreadyDone == 5)
        #expect(try snapshot(dir + "/out") == before)
    }

    @Test("three workers at once fill one directory; verify is complete and the union equals one worker's run")
    func threeWorkers() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 40))
        let procs = (0..<3).map { i -> Process in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Paths.llamaprobe)
            p.arguments = ["extract", "--model", Self.model, "--data", dir + "/d.csv", "--out", dir + "/multi",
                           "--worker", "\(i)/3", "--rows-per-shard", "5", "--threads", "1"]
            p.standardError = FileHandle.nullDevice
            try! p.run()
            return p
        }
        for p in procs { p.waitUntilExit(); #expect(p.terminationStatus == 0) }
        let v = try ShardVerification.run(directory: dir + "/multi")
        #expect(v.isComplete && v.rows == 40, "\(v.problems)")
        var single = config(dir + "/d.csv", dir + "/single")
        single.rowsPerShard = 5
        _ = try Extractor.run(single)
        #expect(try rowsByIndex(dir + "/multi") == (try rowsByIndex(dir + "/single")))
        // A worker's shards are missing: verify says which rows.
        try FileManager.default.removeItem(atPath: dir + "/multi/" + Shard.fileName(worker: 1, index: 0))
        let broken = try ShardVerification.run(directory: dir + "/multi")
        #expect(!broken.isComplete && broken.problems.contains { $0.contains("missing") })
    }

    @Test("kill -9 in the middle of a real run, rerun: the directory is byte-identical to an undisturbed run")
    func crashAndResume() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 440))
        func command(_ out: String) -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Paths.llamaprobe)
            p.arguments = ["extract", "--model", Self.model, "--data", dir + "/d.csv", "--out", out,
                           "--rows-per-shard", "4", "--threads", "1"]
            p.standardError = FileHandle.nullDevice
            return p
        }
        let clean = command(dir + "/clean")
        try clean.run(); clean.waitUntilExit()
        #expect(clean.terminationStatus == 0)

        let victim = command(dir + "/crashed")
        try victim.run()
        // Wait until some shards are done, then kill -9 while it works.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let n = ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/crashed")) ?? []).filter { $0.hasPrefix("shard-") }.count
            if n >= 5 { break }
            usleep(2000)
        }
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        #expect(victim.terminationReason == .uncaughtSignal, "the run finished before it could be killed; make it longer")
        let partial = try Manifest.read(path: dir + "/crashed/" + Manifest.fileName(worker: 0))
        #expect(!partial.complete && partial.shards.count < 110)

        let rerun = command(dir + "/crashed")
        try rerun.run(); rerun.waitUntilExit()
        #expect(rerun.terminationStatus == 0)
        #expect(try snapshot(dir + "/crashed") == (try snapshot(dir + "/clean")))
    }

    @Test("the README's Python snippet reads shards Swift wrote")
    func pythonReader() throws {
        let readme = try String(contentsOf: Paths.repo.appendingPathComponent("README.md"), encoding: .utf8)
        guard let start = readme.range(of: "<!-- shard-reader -->\n```python\n"),
              let end = readme.range(of: "```", range: start.upperBound..<readme.endIndex) else {
            Issue.record("README.md has no <!-- shard-reader --> python block"); return
        }
        let snippet = String(readme[start.upperBound..<end.lowerBound])
        #expect(snippet.split(separator: "\n").count <= 10)
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 9))
        var cfg = config(dir + "/d.csv", dir + "/out")
        cfg.dtype = .f16
        _ = try Extractor.run(cfg)
        let path = try ShardDirectory(path: dir + "/out").shardPaths[0]
        let b = try Shard.read(path: path)
        let script = snippet + """

        import sys
        r, meta = read_shard(sys.argv[1])
        print(r["resid_post"].shape, r["resid_post"].dtype, r["label"].tolist(), r["row"].tolist(), meta["labels"])
        print(repr(float(r["resid_post"][2, 1, 5])))
        """
        writeFile(dir + "/read.py", script)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", dir + "/read.py", path]
        let pipe = Pipe(), err = Pipe()
        p.standardOutput = pipe; p.standardError = err
        try p.run(); p.waitUntilExit()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "python failed (scripts/setup.sh installs numpy and zstandard): \(errText)")
        let lines = out.split(separator: "\n")
        #expect(lines.first == "(7, 3, 64) float16 \(b.labels.map(Int.init)) \(b.rows.map(Int.init)) [\(defaultEmotionLabels.map { "'\($0)'" }.joined(separator: ", "))]")
        #expect(lines.count == 2 && Float(lines[1]) == b.residPost[2 * 3 * 64 + 64 + 5])
    }

    @Test("python/llamaprobe_shards.py reads a two-worker BF16 directory in row order, equal to shards export (npy and safetensors)")
    func pythonDirectoryAndExport() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 19))
        var cfg = config(dir + "/d.csv", dir + "/out")
        cfg.dtype = .bf16
        cfg.workers = 2
        for w in 0..<2 { cfg.worker = w; _ = try Extractor.run(cfg) }
        let npy = try ShardExport.run(directory: dir + "/out", format: .npy, out: dir + "/npy")
        #expect(npy.rows == 19 && npy.layers == 3 && npy.dModel == 64)
        _ = try ShardExport.run(directory: dir + "/out", format: .safetensors, out: dir + "/all.safetensors")
        let st = try SafeTensorsFile(path: dir + "/all.safetensors")
        #expect(try st.integers("row") == (0..<19).map(Int64.init))
        // Every exported row equals the shard's row (BF16 widened exactly).
        let values = try st.floats("resid_post")
        for path in try ShardDirectory(path: dir + "/out").shardPaths {
            let b = try Shard.read(path: path)
            for (i, r) in b.rows.enumerated() {
                #expect(Array(values[Int(r) * 192..<(Int(r) + 1) * 192]) == Array(b.residPost[i * 192..<(i + 1) * 192]))
            }
        }
        let script = """
        import sys, numpy as np
        sys.path.insert(0, sys.argv[1])
        from llamaprobe_shards import read_directory
        data, meta = read_directory(sys.argv[2])
        assert data["resid_post"].dtype == np.float32 and data["resid_post"].shape == (19, 3, 64)
        assert data["row"].tolist() == list(range(19))
        for k in ("resid_post", "label", "row", "n_tokens"):
            assert np.array_equal(data[k], np.load(sys.argv[3] + "/" + k + ".npy")), k
        print(meta["labels"][0], len(meta["manifests"]))
        """
        writeFile(dir + "/read.py", script)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", dir + "/read.py", Paths.repo.appendingPathComponent("python").path, dir + "/out", dir + "/npy"]
        let pipe = Pipe(), err = Pipe()
        p.standardOutput = pipe; p.standardError = err
        try p.run(); p.waitUntilExit()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "python failed: \(errText)")
        #expect(out == "\(defaultEmotionLabels[0]) 2\n")
    }

    /// Every file's bytes in a directory (the worker's lock file holds the pid of its last holder: only its
    /// presence is compared).
    func snapshot(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) {
            out[f] = f.hasPrefix(".lock-") ? Data() : try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
        }
        return out
    }

    /// Row index -> (label, resid_post) over a shard directory.
    func rowsByIndex(_ dir: String) throws -> [Int64: [Float]] {
        var out: [Int64: [Float]] = [:]
        for p in try ShardDirectory(path: dir).shardPaths {
            let b = try Shard.read(path: p)
            let w = b.layerCount * b.metadata.dModel
            for i in 0..<b.count { out[b.rows[i]] = [Float(b.labels[i])] + Array(b.residPost[(i * w)..<((i + 1) * w)]) }
        }
        return out
    }
}
