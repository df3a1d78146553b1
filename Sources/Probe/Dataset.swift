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
/// or without BOM; comma-separated, tab-separated for .tsv/.tab, or any one-byte `delimiter`) with text and
/// label columns, or JSONL with `message` or `messages` and `label` (a string or an integer).
public struct Dataset {
    public let path: String
    /// Every data row in file order: a row, or why it is unusable.
    public let rows: [Result<DatasetRow, DatasetError>]

    /// `delimiter`: the CSV field separator; nil = by extension (tab for .tsv and .tab, else comma).
    /// A file without data rows (header only, or empty) is refused. `labelColumn` nil: unlabelled rows (label "",
    /// e.g. predict without --label-column).
    public init(path: String, textColumn: String = "message", labelColumn: String? = "label", delimiter: UInt8? = nil) throws {
        self.path = path
        var bytes: [UInt8]
        do { bytes = try Files.read(path, limit: 1 << 34) } catch let e as FileError {
            throw DatasetError(file: path, reason: "cannot read: \(e.reason)")
        }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        let lower = path.lowercased()
        if lower.hasSuffix(".jsonl") || lower.hasSuffix(".ndjson") {
            rows = Self.parseJSONL(bytes, file: path, textKey: textColumn, labelKey: labelColumn)
            guard !rows.isEmpty else { throw DatasetError(file: path, reason: "no rows: the file is empty (expected one JSON object per line)") }
        } else {
            let sep = delimiter ?? (lower.hasSuffix(".tsv") || lower.hasSuffix(".tab") ? UInt8(ascii: "\t") : UInt8(ascii: ","))
            rows = try Self.parseCSV(bytes, file: path, textColumn: textColumn, labelColumn: labelColumn, delimiter: sep)
            guard !rows.isEmpty else { throw DatasetError(file: path, reason: "no data rows: the file has only a header") }
        }
    }

    /// `--delimiter`: one character, or `tab`; nil if it is neither (or a quote or line break).
    public static func delimiter(named s: String) -> UInt8? {
        let names: [String: UInt8] = ["tab": 9, "\\t": 9, "\t": 9, "comma": 44, "semicolon": 59, "pipe": 124]
        if let b = names[s.lowercased()] { return b }
        let u = Array(s.utf8)
        guard u.count == 1, u[0] != UInt8(ascii: "\""), u[0] != 10, u[0] != 13 else { return nil }
        return u[0]
    }

    static func delimiterName(_ b: UInt8) -> String {
        switch b {
        case 9: return "tab"
        case 44: return "','"
        default: return "'\(String(UnicodeScalar(b)))'"
        }
    }

    /// The distinct labels of the readable rows, in first-seen order.
    public var labelsFound: [String] {
        var seen = Set<String>(), out: [String] = []
        for case .success(let r) in rows where seen.insert(r.label).inserted { out.append(r.label) }
        return out
    }

    /// Readable rows per label.
    public var labelCounts: [String: Int] {
        var c: [String: Int] = [:]
        for case .success(let r) in rows { c[r.label, default: 0] += 1 }
        return c
    }

    /// The documented class order when `--labels` is not given: sorted, integers (all labels integers)
    /// numerically, otherwise by Unicode code points.
    public static func labelOrder(_ labels: [String]) -> [String] {
        let ints = labels.map { Int($0) }
        if !labels.isEmpty, ints.allSatisfy({ $0 != nil }) {
            return zip(labels, ints).sorted { ($0.1!, $0.0) < ($1.1!, $1.0) }.map(\.0)
        }
        return labels.sorted { Array($0.unicodeScalars.map(\.value)).lexicographicallyPrecedes($1.unicodeScalars.map(\.value)) }
    }

    // MARK: CSV

    /// Splits RFC 4180 CSV into records of raw byte fields, with the line each record starts on.
    static func csvRecords(_ b: [UInt8], file: String, delimiter: UInt8 = UInt8(ascii: ",")) throws -> [(line: Int, fields: [[UInt8]])] {
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
            case delimiter:
                endField()
            case UInt8(ascii: "\""):
                if field.isEmpty && !quoted { inQuotes = true; quoted = true }
                else { throw DatasetError(file: file, line: line, reason: "a quote inside an unquoted field (RFC 4180: quote the whole field and double inner quotes)") }
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

    /// A column name as written, without surrounding whitespace, a stray `\r` or a byte order mark.
    static func columnName(_ s: String) -> String {
        var t = s.trimmingCharacters(in: .whitespacesAndNewlines)
        while t.hasPrefix("\u{FEFF}") { t = String(t.dropFirst()).trimmingCharacters(in: .whitespacesAndNewlines) }
        return t
    }

    static func parseCSV(_ b: [UInt8], file: String, textColumn: String, labelColumn: String?,
                         delimiter: UInt8 = UInt8(ascii: ",")) throws -> [Result<DatasetRow, DatasetError>] {
        let records = try csvRecords(b, file: file, delimiter: delimiter)
        guard let header = records.first else { throw DatasetError(file: file, reason: "the file is empty (expected a header row)") }
        let names = header.fields.map { columnName(String(decoding: $0, as: UTF8.self)) }
        func missing(_ column: String, _ flag: String) -> DatasetError {
            // One column holding another separator: the delimiter is wrong, not the column name.
            if names.count == 1, let other = [UInt8(ascii: "\t"), UInt8(ascii: ";"), UInt8(ascii: ","), UInt8(ascii: "|")]
                .filter({ $0 != delimiter }).max(by: { a, c in header.fields[0].count(where: { $0 == a }) < header.fields[0].count(where: { $0 == c }) }),
               header.fields[0].contains(other) {
                return DatasetError(file: file, line: 1, reason: "no '\(column)' column: the header is one column '\(names[0])' split by \(delimiterName(delimiter)); the delimiter is probably \(delimiterName(other)) (pass --delimiter \(other == 9 ? "tab, or name the file .tsv" : "'\(String(UnicodeScalar(other)))'"))")
            }
            return DatasetError(file: file, line: 1, reason: "no '\(column)' column (columns: \(names.joined(separator: ", "))); pass \(flag)")
        }
        guard let ti = names.firstIndex(of: textColumn) else { throw missing(textColumn, "--text-column") }
        let li: Int? = try labelColumn.map { c in
            guard let i = names.firstIndex(of: c) else { throw missing(c, "--label-column") }
            return i
        }
        return records.dropFirst().enumerated().map { index, rec in
            func bad(_ reason: String) -> Result<DatasetRow, DatasetError> {
                .failure(DatasetError(file: file, row: index, line: rec.line, reason: reason))
            }
            guard rec.fields.count == names.count else {
                return bad("has \(rec.fields.count) fields, the header has \(names.count)")
            }
            guard let text = String(validatingUTF8Bytes: rec.fields[ti]), let label = li.map({ String(validatingUTF8Bytes: rec.fields[$0]) }) ?? "" else {
                return bad("invalid UTF-8")
            }
            guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return bad("empty message") }
            guard li != nil else { return .success(DatasetRow(index: index, line: rec.line, content: .message(text), label: "")) }
            let l = label.trimmingCharacters(in: .whitespacesAndNewlines)   // a stray \r of \r\r\n line ends too
            guard !l.isEmpty else { return bad("empty label") }
            return .success(DatasetRow(index: index, line: rec.line, content: .message(text), label: l))
        }
    }

    // MARK: JSONL

    static func parseJSONL(_ b: [UInt8], file: String, textKey: String, labelKey: String?) -> [Result<DatasetRow, DatasetError>] {
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
            var label = ""
            if let labelKey {
                switch jsonLabel(obj[labelKey], line: bytes, key: labelKey) {
                case .success(let l): label = l
                case .failure(let e): bad(e.reason); continue
                }
            }
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

extension Dataset {
    /// A JSON value of the label key: a non-empty string, or an integer (as its decimal text, so that
    /// `"label": 3` and a CSV `3` are the same class). Booleans, fractions, lists and objects are refused.
    static func jsonLabel(_ v: Any?, line: [UInt8], key: String) -> Result<String, DatasetError> {
        func fail(_ r: String) -> Result<String, DatasetError> { .failure(DatasetError(file: "", reason: r)) }
        guard let v, !(v is NSNull) else { return fail("missing '\(key)'") }
        if let s = v as? String { return s.trimmingCharacters(in: .whitespaces).isEmpty ? fail("empty '\(key)'") : .success(s) }
        // JSONSerialization gives numbers and booleans as NSNumber: ask the JSON itself which it was.
        let dec = JSONDecoder()
        dec.userInfo[JSONLabelProbe.keyInfo] = key
        if case .int(let i)? = (try? dec.decode(JSONLabelProbe.self, from: Data(line)))?.value { return .success(String(i)) }
        return fail("'\(key)' must be a string or an integer")
    }
}

/// The label key of one JSON line, decoded to tell integers from booleans and fractions.
private struct JSONLabelProbe: Decodable {
    static let keyInfo = CodingUserInfoKey(rawValue: "llamaprobe.labelKey")!
    let value: Value
    enum Value: Decodable {
        case int(Int), other
        init(from d: Decoder) throws {
            let c = try d.singleValueContainer()
            if (try? c.decode(Bool.self)) != nil { self = .other }
            else if let i = try? c.decode(Int.self) { self = .int(i) }
            else { self = .other }
        }
    }
    struct Key: CodingKey {
        var stringValue: String; var intValue: Int? { nil }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
    init(from d: Decoder) throws {
        guard let name = d.userInfo[JSONLabelProbe.keyInfo] as? String, let key = Key(stringValue: name) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "no key"))
        }
        value = try d.container(keyedBy: Key.self).decode(Value.self, forKey: key)
    }
}

extension String {
    /// Decodes UTF-8, or nil if the bytes are not valid UTF-8.
    init?(validatingUTF8Bytes bytes: [UInt8]) {
        guard let s = String(bytes: bytes, encoding: .utf8) else { return nil }
        self = s
    }
}
