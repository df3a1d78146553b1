import Extraction
import Foundation
import Model
import Probe
import Formats
import Testing

/// Issue 10: labels as researchers have them, and data files that say what is wrong with them.
@Suite struct LabelsAndDataTests {
    func config(_ data: String, _ out: String) -> ExtractionConfig { fixtureConfig(data, out) }

    func metadata(_ out: String) throws -> ShardMetadata { try Manifest.read(path: out + "/" + Manifest.fileName(worker: 0)).metadata }

    @Test("without --labels: labels other than the seven states become the sorted distinct labels, printed and recorded")
    func sortedLabels() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", "message,label\ngreat film,positive\nawful film,negative\nfine film,positive\n")
        var log: [String] = []
        _ = try Extractor.run(config(dir + "/d.csv", dir + "/out"), log: { log.append($0) })
        #expect(try metadata(dir + "/out").labels == ["negative", "positive"])
        #expect(log.contains { $0.contains("classes (id=label (rows)): 0=negative (1), 1=positive (2)") }, "\(log)")
        // Unicode code point order, not locale order.
        #expect(Dataset.labelOrder(["b", "B", "a", "é"]) == ["B", "a", "b", "é"])
    }

    @Test("integer labels in CSV and JSONL (\"label\": 3) are classes in numeric order; booleans and fractions are refused")
    func integerLabels() throws {
        let dir = tempDir()
        writeFile(dir + "/d.jsonl", """
        {"message": "one", "label": 10}
        {"message": "two", "label": 2}
        {"message": "three", "label": "3"}
        {"message": "four", "label": true}
        {"message": "five", "label": 1.5}
        {"message": "six", "label": null}
        """)
        let d = try Dataset(path: dir + "/d.jsonl")
        #expect(try d.rows[0].get().label == "10" && (try d.rows[1].get().label) == "2" && (try d.rows[2].get().label) == "3")
        for i in [3, 4] {
            guard case .failure(let e) = d.rows[i] else { Issue.record("row \(i) accepted"); continue }
            #expect(e.reason == "'label' must be a string or an integer" && e.line == i + 1, "\(e)")
        }
        guard case .failure(let e) = d.rows[5] else { Issue.record("null label accepted"); return }
        #expect(e.reason == "missing 'label'")
        var cfg = config(dir + "/d.jsonl", dir + "/out")
        cfg.onError = .skip
        _ = try Extractor.run(cfg)
        #expect(try metadata(dir + "/out").labels == ["2", "3", "10"])

        writeFile(dir + "/d.csv", "message,label\na,10\nb,2\nc,9\n")
        _ = try Extractor.run(config(dir + "/d.csv", dir + "/csv"))
        #expect(try metadata(dir + "/csv").labels == ["2", "9", "10"])
    }

    @Test("a subset of the seven states keeps the recipe's seven classes and reports the empty ones")
    func emptyClassesReported() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", "message,label\nyay,happy\nmeh,neutral\nboo,sad\n")
        var log: [String] = []
        _ = try Extractor.run(config(dir + "/d.csv", dir + "/out"), log: { log.append($0) })
        #expect(try metadata(dir + "/out").labels == defaultEmotionLabels)
        #expect(log.contains { $0.contains("warning: 4 class(es) have no rows: very_happy, slightly_positive, slightly_negative, very_sad")
            && $0.contains("--allow-empty-classes") }, "\(log)")
    }

    @Test("--on-error skip skips unknown labels; skipped and truncated rows are listed with file:line in the manifest and the summary")
    func skippedAndTruncatedLines() throws {
        let dir = tempDir()
        let long = Array(repeating: "word", count: 60).joined(separator: " ")
        writeFile(dir + "/d.csv", "message,label\nfine,happy\n,sad\n\"two\nlines\",angry\n\(long),neutral\n")
        var cfg = config(dir + "/d.csv", dir + "/out")
        cfg.labels = defaultEmotionLabels
        cfg.onError = .skip
        cfg.maxTokens = 16
        cfg.renderer = PromptRenderer(template: .raw)
        let s = try Extractor.run(cfg)
        #expect(s.rows == 2 && s.skipped == 2 && s.truncated == 1)
        let m = try Manifest.read(path: dir + "/out/" + Manifest.fileName(worker: 0))
        #expect(m.skipped.map(\.row) == [1, 2] && m.skipped.map(\.line) == [3, 4], "\(m.skipped)")
        #expect(m.skipped[1].reason.contains("unknown label 'angry'"))
        #expect(m.shards.flatMap(\.truncated) == [3] && m.shards.compactMap(\.truncatedLines).flatMap { $0 } == [6], "\(m.shards)")
        #expect(s.skippedRows == [dir + "/d.csv:3 (row 1): empty message",
                                  dir + "/d.csv:4 (row 2): unknown label 'angry' (labels: \(defaultEmotionLabels.joined(separator: ", ")))"], "\(s.skippedRows)")
        #expect(s.truncatedRows == [dir + "/d.csv:6 (row 3)"], "\(s.truncatedRows)")
    }

    @Test("empty datasets are refused: a header-only CSV, an empty or blank JSONL")
    func emptyDatasets() throws {
        let dir = tempDir()
        for (name, text, expect) in [("h.csv", "message,label\n", "no data rows: the file has only a header"),
                                     ("e.jsonl", "", "no rows: the file is empty"),
                                     ("b.jsonl", "\n  \n", "no rows: the file is empty")] {
            writeFile(dir + "/" + name, text)
            do { _ = try Dataset(path: dir + "/" + name); Issue.record("\(name) accepted") } catch let e as DatasetError {
                #expect(e.file == dir + "/" + name && e.reason.contains(expect), "\(e)")
            }
        }
        do { _ = try Extractor.run(config(dir + "/h.csv", dir + "/out")); Issue.record("header-only CSV extracted") } catch {
            #expect(error.localizedDescription.contains("only a header"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("tab-separated by extension or --delimiter; a wrong delimiter is named as such")
    func delimiters() throws {
        let dir = tempDir()
        writeFile(dir + "/d.tsv", "text\tlabel\nhello, world\thappy\nbye\tsad\n")
        let tsv = try Dataset(path: dir + "/d.tsv", textColumn: "text")
        #expect(try tsv.rows[0].get().content == .message("hello, world") && (try tsv.rows[1].get().label) == "sad")

        writeFile(dir + "/semi.csv", "text;label\nhello;happy\n")
        do { _ = try Dataset(path: dir + "/semi.csv", textColumn: "text"); Issue.record("wrong delimiter accepted") } catch let e as DatasetError {
            #expect(e.reason.contains("no 'text' column: the header is one column 'text;label' split by ','; the delimiter is probably ';' (pass --delimiter ';')"), "\(e)")
        }
        let semi = try Dataset(path: dir + "/semi.csv", textColumn: "text", delimiter: Dataset.delimiter(named: ";"))
        #expect(try semi.rows[0].get().label == "happy")

        writeFile(dir + "/tabs.csv", "text\tlabel\nhello\thappy\n")
        do { _ = try Dataset(path: dir + "/tabs.csv", textColumn: "text"); Issue.record("wrong delimiter accepted") } catch let e as DatasetError {
            #expect(e.reason.contains("the delimiter is probably tab (pass --delimiter tab, or name the file .tsv)"), "\(e)")
        }
        #expect(Dataset.delimiter(named: "tab") == 9 && Dataset.delimiter(named: "\\t") == 9 && Dataset.delimiter(named: "|") == 124)
        #expect(Dataset.delimiter(named: "\"") == nil && Dataset.delimiter(named: ";;") == nil)
    }

    @Test("a stray \\r or a byte order mark in a column name does not break matching")
    func invisibleCharactersInHeader() throws {
        let dir = tempDir()
        let p = dir + "/d.csv"
        // A second BOM (files concatenated) and a \r left by \r\r\n line ends.
        try Data([0xEF, 0xBB, 0xBF, 0xEF, 0xBB, 0xBF] + Array("message,label\r\r\nhi,happy\r\r\n".utf8)).write(to: URL(fileURLWithPath: p))
        let d = try Dataset(path: p)
        #expect(try d.rows[0].get().label == "happy" && (try d.rows[0].get().content) == .message("hi"))
    }

    @Test(".pth-only probes: the best layer from probe_training_metrics.csv columns found by name, or none")
    func pthBestLayer() throws {
        let dir = tempDir()
        for l in 0..<3 { try HostileProbeTests.pth(dir, "probe_at_layer_\(l).pth", classes: 2, d: 8) }
        #expect(try ProbeSet.load(directory: dir).bestLayer == nil, "no metrics: no best layer (it was silently 0)")
        // The PyTorch recipe's columns (another order, another name); ties go to the lower layer.
        writeFile(dir + "/probe_training_metrics.csv", "best_val_accuracy,layer\r\n0.5,0\r\n0.75,2\r\n0.75,1\r\n")
        #expect(try ProbeSet.load(directory: dir).bestLayer == 1)
        writeFile(dir + "/probe_training_metrics.csv", "layer,epoch,train_loss,train_accuracy,val_accuracy,best_accuracy,is_best,lr\n0,1,0.5,0.5,,0.9,1,0.001\n1,1,0.5,0.5,0.6,0.6,1,0.001\n2,1,0.5,0.5,,0,0,0.001\n")
        #expect(try ProbeSet.load(directory: dir).bestLayer == 0)
        writeFile(dir + "/probe_training_metrics.csv", "step,loss\n1,0.5\n")
        #expect(try ProbeSet.load(directory: dir).bestLayer == nil)
    }
}
