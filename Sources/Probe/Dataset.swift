import Foundation
import Formats

public struct DatasetError: LocalizedError, Equatable {
    public let file: String
    /// 0-based data row (the `row` index stored in shards), when the error is about one row.
    public let row: Int?
    /// 1-based line of the file where the row starts.
    public let line: Int?
    public let reason: String
    public init(file: String, row: Int? = nil, line: Int? = nil, reason: String) {
        self.file = file; self.row = row; self.line = line; self.reason = reason
    }
    public var errorDescription: String? {
        var s = file
        if let line { s += ":\(line)" }
        if let row { s += " (row \(row))" }
        return s + ": " + reason
    }
}

/// One labelled example: a single message, or a role/content conversation.
public struct DatasetRow: Sendable, Equatable {
    public enum Content: Sendable, Equatable {
        case message(String)
        case conversation([(role: String, content: String)])
        public static func == (a: Content, b: Content) -> Bool {
            switch (a, b) {
            case (.message(let x), .message(let y)): return x == y
            case (.conversation(let x), .conversation(let y)): return x.map { [$0.role, $0.content] } == y.map { [$0.role, $0.content] }
            default: return false
            }
        }
    }
    /// 0-based index of the row among the file's data rows.
    public let index: Int
    /// 1-based line where the row starts.
    public let line: Int
    public let content: Content
    public let label: String
}

/// A row that could not be read, with the reason (reported, or skipped with `--on-error skip`).
public struct BadRow: Sendable, Equatable {
    public let index: Int
    public let line: Int
    public let reason: String
    public init(index: Int, line: Int, reason: String) { self.index = index; self.line = line; self.reason = reason }
}

/// Labelled datasets: CSV (RFC 4180: quoted fields, doubled quotes, embedded newlines, CRLF or LF, UTF-8 with
/// or without BOM) with text and label columns, or JSONL with `message` or `messages` and `label`.
public struct Dataset {
    public let path: String
    /// Every data row in file order: a row, or why it is unusable.
    public let rows: [Result<DatasetRow, DatasetError>]

    public init(path: String, textColumn: String = "message", labelColumn: String = "label") throws {
        self.path = path
        var bytes: [UInt8]
        do { bytes = try Files.read(path, limit: 1 << 34) } catch let e as FileError {
            throw DatasetError(file: path, reason: "cannot read: \(e.reason)")
        }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        if path.lowercased().hasSuffix(".jsonl") || path.lowercased().hasSuffix(".ndjson") {
            rows = Self.parseJSONL(bytes, file: path, textKey: textColumn, labelKey: labelColumn)
        } else {
            rows = try Self.parseCSV(bytes, file: path, textColumn: textColumn, labelColumn: labelColumn)
        }
    }

    /// The distinct labels of the readable rows, in first-seen order.
    public var labelsFound: [String] {
        var seen = Set<String>(), out: [String] = []
        for case .success(let r) in rows where seen.insert(r.label).inserted { out.append(r.label) }
        return out
    }

    // MARK: CSV

    /// Splits RFC 4180 CSV into records of raw byte fields, with the line each record starts on.
    static func csvRecords(_ b: [UInt8], file: String) throws -> [(line: Int, fields: [[UInt8]])] {
        var records: [(Int, [[UInt8]])] = []
        var fields: [[UInt8]] = []
        var field: [UInt8] = []
        var i = 0, line = 1, recordLine = 1
        var inQuotes = false, quoted = false
        func endField() { fields.append(field); field = []; quoted = false }
        func endRecord() {
            endField()
            if !(fields.count == 1 && fields[0].isEmpty) { records.append((recordLine, fields)) }
            fields = []
        }
        while i < b.count {
            let c = b[i]
            if inQuotes {
                if c == UInt8(ascii: "\"") {
                    if i + 1 < b.count && b[i + 1] == UInt8(ascii: "\"") { field.append(c); i += 2; continue }
                    inQuotes = false
                } else {
                    if c == UInt8(ascii: "\n") { line += 1 }
                    field.append(c)
                }
                i += 1
                continue
            }
            switch c {
            case UInt8(ascii: "\""):
                if field.isEmpty && !quoted { inQuotes = true; quoted = true }
                else { throw DatasetError(file: file, line: line, reason: "a quote inside an unquoted field (RFC 4180: quote the whole field and double inner quotes)") }
            case UInt8(ascii: ","):
                endField()
            case UInt8(ascii: "\r") where i + 1 < b.count && b[i + 1] == UInt8(ascii: "\n"):
                i += 1
                endRecord(); line += 1; recordLine = line
            case UInt8(ascii: "\n"):
                endRecord(); line += 1; recordLine = line
            default:
                if quoted { throw DatasetError(file: file, line: line, reason: "text after a closing quote") }
                field.append(c)
            }
            i += 1
        }
        if inQuotes { throw DatasetError(file: file, line: recordLine, reason: "a quoted field is never closed (file truncated?)") }
        if !field.isEmpty || !fields.isEmpty || quoted { endRecord() }
        return records
    }

    static func parseCSV(_ b: [UInt8], file: String, textColumn: String, labelColumn: String) throws -> [Result<DatasetRow, DatasetError>] {
        let records = try csvRecords(b, file: file)
        guard let header = records.first else { throw DatasetError(file: file, reason: "the file is empty (expected a header row)") }
        let names = header.fields.map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespaces) }
        guard let ti = names.firstIndex(of: textColumn) else {
            throw DatasetError(file: file, line: 1, reason: "no '\(textColumn)' column (columns: \(names.joined(separator: ", "))); pass --text-column")
        }
        guard let li = names.firstIndex(of: labelColumn) else {
            throw DatasetError(file: file, line: 1, reason: "no '\(labelColumn)' column (columns: \(names.joined(separator: ", "))); pass --label-column")
        }
        return records.dropFirst().enumerated().map { index, rec in
            func bad(_ reason: String) -> Result<DatasetRow, DatasetError> {
                .failure(DatasetError(file: file, row: index, line: rec.line, reason: reason))
            }
            guard rec.fields.count == names.count else {
                return bad("has \(rec.fields.count) fields, the header has \(names.count)")
            }
            guard let text = String(validatingUTF8Bytes: rec.fields[ti]), let label = String(validatingUTF8Bytes: rec.fields[li]) else {
                return bad("invalid UTF-8")
            }
            guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return bad("empty message") }
            let l = label.trimmingCharacters(in: .whitespaces)
            guard !l.isEmpty else { return bad("empty label") }
            return .success(DatasetRow(index: index, line: rec.line, content: .message(text), label: l))
        }
    }

    // MARK: JSONL

    static func parseJSONL(_ b: [UInt8], file: String, textKey: String, labelKey: String) -> [Result<DatasetRow, DatasetError>] {
        var out: [Result<DatasetRow, DatasetError>] = []
        var line = 0
        for raw in b.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            line += 1
            var bytes = Array(raw)
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            let index = out.count
            func bad(_ reason: String) { out.append(.failure(DatasetError(file: file, row: index, line: line, reason: reason))) }
            guard String(validatingUTF8Bytes: bytes) != nil else { bad("invalid UTF-8"); continue }
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
                bad("not a JSON object (unparsable JSON)"); continue
            }
            guard let label = obj[labelKey] as? String, !label.isEmpty else { bad("missing or empty '\(labelKey)'"); continue }
            if let m = obj[textKey] as? String {
                guard !m.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { bad("empty message"); continue }
                out.append(.success(DatasetRow(index: index, line: line, content: .message(m), label: label)))
            } else if let ms = obj["messages"] as? [[String: Any]] {
                var turns: [(String, String)] = []
                for m in ms {
                    guard let role = m["role"] as? String, let content = m["content"] as? String else { break }
                    turns.append((role, content))
                }
                guard turns.count == ms.count, !turns.isEmpty else { bad("'messages' must be a non-empty list of {role, content}"); continue }
                out.append(.success(DatasetRow(index: index, line: line, content: .conversation(turns), label: label)))
            } else {
                bad("needs '\(textKey)' (a string) or 'messages' (a list of {role, content})")
            }
        }
        return out
    }
}

extension String {
    /// Decodes UTF-8, or nil if the bytes are not valid UTF-8.
    init?(validatingUTF8Bytes bytes: [UInt8]) {
        guard let s = String(bytes: bytes, encoding: .utf8) else { return nil }
        self = s
    }
}
