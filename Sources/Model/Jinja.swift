import Foundation

// A Jinja subset that renders chat templates as transformers does: `ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, extensions=[loopcontrols])`, the default (lenient) Undefined, `raise_exception`,
// `strftime_now`, and transformers' own `tojson`. The templates are downloaded files: every failure is a thrown
// `JinjaError` naming the construct and the line, and parsing, evaluation, loops and output are bounded.

/// Why a template could not be parsed or rendered.
public struct JinjaError: LocalizedError, Equatable {
    public enum Kind: Equatable, Sendable {
        /// The template called `raise_exception(message)`.
        case raised
        /// The template is malformed, uses a construct this renderer does not support, or failed at run time.
        case template
    }
    public let kind: Kind
    public let message: String
    public let line: Int?
    public init(kind: Kind, message: String, line: Int?) { self.kind = kind; self.message = message; self.line = line }
    public var errorDescription: String? {
        switch kind {
        case .raised: return "the chat template raised an error: \(message)"
        case .template: return line.map { "chat template line \($0): \(message)" } ?? "chat template: \(message)"
        }
    }
    static func at(_ line: Int, _ message: String) -> JinjaError { JinjaError(kind: .template, message: message, line: line) }
}

/// A value inside a template: Python's types as Jinja sees them.
public indirect enum JinjaValue: Equatable {
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case list([JinjaValue])
    /// Keys in insertion order (Python dicts keep it; `tojson` and `items` print in that order).
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case macro(JinjaMacro)
    case builtin(String)

    public static func == (a: JinjaValue, b: JinjaValue) -> Bool { JinjaValue.equal(a, b) }

    /// Values nested deeper than this (a template can build them in a loop) compare unequal and do not print.
    static let maxNesting = 100

    static func equal(_ a: JinjaValue, _ b: JinjaValue, depth: Int = 0) -> Bool {
        guard depth < maxNesting else { return false }
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1, depth: depth + 1) }
        case (.dict(let x), .dict(let y)):
            return x.keys.count == y.keys.count && x.keys.allSatisfy { k in y[k].map { equal(x[k]!, $0, depth: depth + 1) } ?? false }
        case (.namespace(let x), .namespace(let y)): return x === y
        case (.macro(let x), .macro(let y)): return x === y
        case (.builtin(let x), .builtin(let y)): return x == y
        default:
            if let x = a.number, let y = b.number { return x == y }
            return false
        }
    }

    /// Numbers as Python compares them (bool is an int).
    var number: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return Double(i)
        case .float(let f): return f
        default: return nil
        }
    }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .float(let f): return f != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.keys.isEmpty
        default: return true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .macro: return "Macro"
        case .builtin: return "function"
        }
    }
}

/// An insertion-ordered string-keyed dictionary.
public struct JinjaDict: Equatable {
    public private(set) var keys: [String] = []
    private var values: [String: JinjaValue] = [:]
    public init(_ pairs: [(String, JinjaValue)] = []) { for (k, v) in pairs { self[k] = v } }
    public subscript(key: String) -> JinjaValue? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil, values[key] != nil { keys.removeAll { $0 == key } }
            values[key] = newValue
        }
    }
    public var pairs: [(String, JinjaValue)] { keys.map { ($0, values[$0]!) } }
    public static func == (a: JinjaDict, b: JinjaDict) -> Bool { JinjaValue.equal(.dict(a), .dict(b)) }
}

/// `namespace()`: the one mutable object (`{% set ns.attr = … %}`), shared by reference.
public final class JinjaNamespace {
    var attributes = JinjaDict()
    init(_ d: JinjaDict) { attributes = d }
}

public final class JinjaMacro {
    let name: String
    let parameters: [(String, JinjaExpr?)]
    let body: [JinjaNode]
    init(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode]) {
        self.name = name; self.parameters = parameters; self.body = body
    }
}

// MARK: - Lexer

enum JinjaToken: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case float(Double)
    case op(String)
}

struct JinjaLexedTag {
    var tokens: [JinjaToken]
    var lines: [Int]
    var line: Int
}

enum JinjaPiece {
    case text(String)
    case output(JinjaLexedTag)
    case statement(JinjaLexedTag)
}

/// Splits a template into text, `{{ … }}` and `{% … %}` pieces, applying transformers' whitespace settings
/// (trim_blocks, lstrip_blocks, `-`/`+` modifiers, comments, keep_trailing_newline=False).
struct JinjaLexer {
    static let maxSourceBytes = 1 << 20

    let scalars: [Unicode.Scalar]
    var pos = 0
    var line = 1

    init(_ source: String) { scalars = Array(source.unicodeScalars) }

    func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        pos + offset < scalars.count ? scalars[pos + offset] : nil
    }

    func starts(_ s: String, at p: Int) -> Bool {
        var i = p
        for u in s.unicodeScalars {
            guard i < scalars.count, scalars[i] == u else { return false }
            i += 1
        }
        return true
    }

    static func isSpace(_ u: Unicode.Scalar) -> Bool { u == " " || u == "\t" || u == "\n" || u == "\r" || u == "\u{0B}" || u == "\u{0C}" }

    mutating func lex() throws -> [JinjaPiece] {
        guard scalars.count <= Self.maxSourceBytes else {
            throw JinjaError(kind: .template, message: "the template has \(scalars.count) characters (more than \(Self.maxSourceBytes))", line: nil)
        }
        struct Raw { var text: [Unicode.Scalar]; var lineStart: Bool }
        var pieces: [(raw: Raw?, tag: JinjaPiece?, isBlock: Bool, leftMinus: Bool, leftPlus: Bool, rightMinus: Bool, rightPlus: Bool)] = []
        var text: [Unicode.Scalar] = []
        var textStart = 0
        func flush(_ start: Int) {
            let lineStart = start == 0 || scalars[start - 1] == "\n"
            pieces.append((Raw(text: text, lineStart: lineStart), nil, false, false, false, false, false))
            text = []
        }
        while pos < scalars.count {
            let u = scalars[pos]
            if u == "{", let next = peek(1), next == "{" || next == "%" || next == "#" {
                if next == "%", starts("{%", at: pos), rawBlockAhead() {
                    try lexRaw(into: &text)
                    continue
                }
                flush(textStart)
                let tagLine = line
                pos += 2
                var leftMinus = false, leftPlus = false
                if peek() == "-" { leftMinus = true; pos += 1 } else if peek() == "+" { leftPlus = true; pos += 1 }
                if next == "#" {
                    // Comment: skip to "#}".
                    var rightMinus = false
                    while true {
                        guard let c = peek() else { throw JinjaError.at(tagLine, "the comment opened here is never closed with #}") }
                        if c == "#", peek(1) == "}" { rightMinus = pos > 0 && scalars[pos - 1] == "-"; pos += 2; break }
                        if c == "\n" { line += 1 }
                        pos += 1
                    }
                    pieces.append((nil, nil, true, leftMinus, leftPlus, rightMinus, false))
                } else {
                    let close = next == "{" ? "}}" : "%}"
                    var tag = JinjaLexedTag(tokens: [], lines: [], line: tagLine)
                    let (rightMinus, rightPlus) = try lexTag(close: close, into: &tag)
                    let piece: JinjaPiece = next == "{" ? .output(tag) : .statement(tag)
                    pieces.append((nil, piece, next == "%", leftMinus, leftPlus, rightMinus, rightPlus))
                }
                textStart = pos
                continue
            }
            if u == "\n" { line += 1 }
            text.append(u)
            pos += 1
        }
        flush(textStart)
        // Whitespace control between the pieces.
        for i in pieces.indices where pieces[i].raw == nil {
            let p = pieces[i]
            if i > 0, var prev = pieces[i - 1].raw {
                if p.leftMinus {
                    while let l = prev.text.last, Self.isSpace(l) { prev.text.removeLast() }
                } else if p.isBlock, !p.leftPlus {
                    // lstrip_blocks: spaces and tabs between the start of the line and a block or comment tag.
                    var j = prev.text.count
                    while j > 0, prev.text[j - 1] != "\n", Self.isSpace(prev.text[j - 1]) { j -= 1 }
                    if (j > 0 && prev.text[j - 1] == "\n") || (j == 0 && prev.lineStart) { prev.text.removeSubrange(j...) }
                }
                pieces[i - 1].raw = prev
            }
            if i + 1 < pieces.count, var next = pieces[i + 1].raw {
                if p.rightMinus {
                    let k = next.text.firstIndex { !Self.isSpace($0) } ?? next.text.count
                    next.text.removeSubrange(0..<k)
                } else if p.isBlock, !p.rightPlus, next.text.first == "\n" {
                    next.text.removeFirst()  // trim_blocks
                    next.lineStart = true
                }
                pieces[i + 1].raw = next
            }
        }
        var out: [JinjaPiece] = []
        for (i, p) in pieces.enumerated() {
            if var raw = p.raw {
                if i == pieces.count - 1, raw.text.last == "\n" { raw.text.removeLast() }  // keep_trailing_newline=False
                if !raw.text.isEmpty {
                    var s = String(String.UnicodeScalarView(raw.text))
                    if s.unicodeScalars.contains("\r") { s = s.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n") }
                    out.append(.text(s))
                }
            } else if let tag = p.tag {
                out.append(tag)
            }
        }
        return out
    }

    /// `{% raw %}` … `{% endraw %}` ahead (with optional `-`).
    func rawBlockAhead() -> Bool {
        var i = pos + 2
        if i < scalars.count, scalars[i] == "-" || scalars[i] == "+" { i += 1 }
        while i < scalars.count, Self.isSpace(scalars[i]) { i += 1 }
        return starts("raw", at: i) && (i + 3 < scalars.count) && (Self.isSpace(scalars[i + 3]) || scalars[i + 3] == "-" || scalars[i + 3] == "%")
    }

    mutating func lexRaw(into text: inout [Unicode.Scalar]) throws {
        let startLine = line
        while pos < scalars.count, !(scalars[pos] == "%" && peek(1) == "}") { pos += 1 }
        pos += 2
        while pos < scalars.count {
            if scalars[pos] == "{", peek(1) == "%" {
                var i = pos + 2
                if i < scalars.count, scalars[i] == "-" { i += 1 }
                while i < scalars.count, Self.isSpace(scalars[i]) { i += 1 }
                if starts("endraw", at: i) {
                    while pos < scalars.count, !(scalars[pos] == "%" && peek(1) == "}") { pos += 1 }
                    pos += 2
                    return
                }
            }
            if scalars[pos] == "\n" { line += 1 }
            text.append(scalars[pos])
            pos += 1
        }
        throw JinjaError.at(startLine, "{% raw %} is never closed with {% endraw %}")
    }

    static let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")",
                            "[", "]", "{", "}", ",", ".", ":", "|"]

    /// Tokens up to the closing `}}` or `%}` (strings may contain them). Returns the -/+ modifiers of the end.
    mutating func lexTag(close: String, into tag: inout JinjaLexedTag) throws -> (Bool, Bool) {
        let kind = close == "}}" ? "{{" : "{%"
        while true {
            guard let u = peek() else { throw JinjaError.at(tag.line, "\(kind) opened here is never closed with \(close)") }
            if Self.isSpace(u) { if u == "\n" { line += 1 }; pos += 1; continue }
            if (u == "-" || u == "+"), starts(close, at: pos + 1) { pos += 3; return (u == "-", u == "+") }
            if starts(close, at: pos) { pos += 2; return (false, false) }
            guard tag.tokens.count < 100_000 else { throw JinjaError.at(line, "a tag with more than 100000 tokens") }
            tag.lines.append(line)
            if u == "\"" || u == "'" {
                tag.tokens.append(.string(try lexString(quote: u)))
            } else if u.properties.isAlphabetic || u == "_" {
                var s = String.UnicodeScalarView()
                while let c = peek(), c.properties.isAlphabetic || c == "_" || ("0"..."9").contains(c) { s.append(c); pos += 1 }
                tag.tokens.append(.name(String(s)))
            } else if ("0"..."9").contains(u) {
                var s = ""
                var isFloat = false
                while let c = peek(), ("0"..."9").contains(c) || c == "_" || (c == "." && !isFloat && peek(1).map { ("0"..."9").contains($0) } == true) {
                    if c == "." { isFloat = true }
                    if c != "_" { s.unicodeScalars.append(c) }
                    pos += 1
                }
                if isFloat {
                    guard let d = Double(s) else { throw JinjaError.at(line, "the number \(s) is malformed") }
                    tag.tokens.append(.float(d))
                } else {
                    guard let i = Int(s) else { throw JinjaError.at(line, "the integer \(s) is too large") }
                    tag.tokens.append(.int(i))
                }
            } else if let op = Self.operators.first(where: { starts($0, at: pos) }) {
                pos += op.unicodeScalars.count
                tag.tokens.append(.op(op))
            } else {
                throw JinjaError.at(line, "unexpected character '\(u)' inside \(kind) … \(close)")
            }
        }
    }

    mutating func lexString(quote: Unicode.Scalar) throws -> String {
        let startLine = line
        pos += 1
        var s = String.UnicodeScalarView()
        while true {
            guard let c = peek() else { throw JinjaError.at(startLine, "a string literal is never closed") }
            pos += 1
            if c == quote { return String(s) }
            if c == "\n" { line += 1 }
            guard c == "\\" else { s.append(c); continue }
            guard let e = peek() else { throw JinjaError.at(startLine, "a string literal is never closed") }
            pos += 1
            switch e {
            case "n": s.append("\n")
            case "t": s.append("\t")
            case "r": s.append("\r")
            case "\\": s.append("\\")
            case "'": s.append("'")
            case "\"": s.append("\"")
            case "0": s.append("\u{0}")
            case "a": s.append("\u{07}")
            case "b": s.append("\u{08}")
            case "f": s.append("\u{0C}")
            case "v": s.append("\u{0B}")
            case "\n": line += 1
            case "x", "u", "U":
                let n = e == "x" ? 2 : e == "u" ? 4 : 8
                var hex = ""
                for _ in 0..<n {
                    guard let h = peek(), h.properties.isASCIIHexDigit else { throw JinjaError.at(line, "a \\\(e) escape needs \(n) hex digits") }
                    hex.unicodeScalars.append(h); pos += 1
                }
                guard let v = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(v) else { throw JinjaError.at(line, "\\\(e)\(hex) is not a character") }
                s.append(scalar)
            default: s.append("\\"); s.append(e)  // Python keeps unknown escapes as written
            }
        }
    }
}

// MARK: - Syntax tree

public indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case negate(JinjaExpr)
    case plus(JinjaExpr)
    case not(JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

public indirect enum JinjaNode {
    case text(String)
    case output(JinjaExpr, line: Int)
    case conditional([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode]?, line: Int)
    case loop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode]?, line: Int)
    case assign(targets: [String], attribute: String?, value: JinjaExpr, line: Int)
    case assignBlock(String, [JinjaNode], line: Int)
    case macro(JinjaMacro, line: Int)
    case loopBreak(line: Int)
    case loopContinue(line: Int)
    case block([JinjaNode])
}

// MARK: - Parser

struct JinjaExprParser {
    static let maxDepth = 200
    var tokens: [JinjaToken]
    var lines: [Int]
    var line: Int
    var i = 0
    var depth = 0

    init(_ tag: JinjaLexedTag, from start: Int = 0) {
        tokens = tag.tokens; lines = tag.lines; line = tag.line; i = start
    }

    var currentLine: Int { i < lines.count ? lines[i] : (lines.last ?? line) }
    var atEnd: Bool { i >= tokens.count }
    func peek(_ k: Int = 0) -> JinjaToken? { i + k < tokens.count ? tokens[i + k] : nil }
    func isOp(_ s: String, _ k: Int = 0) -> Bool { peek(k) == .op(s) }
    func isName(_ s: String, _ k: Int = 0) -> Bool { peek(k) == .name(s) }

    func fail(_ message: String) -> JinjaError { JinjaError.at(currentLine, message) }

    func describe(_ t: JinjaToken?) -> String {
        switch t {
        case nil: return "the end of the tag"
        case .name(let n)?: return "'\(n)'"
        case .string(let s)?: return "the string '\(s)'"
        case .int(let n)?: return "\(n)"
        case .float(let f)?: return "\(f)"
        case .op(let o)?: return "'\(o)'"
        }
    }

    mutating func expectOp(_ s: String) throws {
        guard isOp(s) else { throw fail("expected '\(s)', found \(describe(peek()))") }
        i += 1
    }

    mutating func name() throws -> String {
        guard case .name(let n)? = peek() else { throw fail("expected a name, found \(describe(peek()))") }
        i += 1
        return n
    }

    mutating func enter() throws {
        depth += 1
        guard depth <= Self.maxDepth else { throw fail("expressions nested more than \(Self.maxDepth) deep") }
    }

    /// A full expression, with an unparenthesized tuple `a, b` read as a list (as in `{% set a = 1, 2 %}`).
    mutating func expression(allowTuple: Bool = false) throws -> JinjaExpr {
        let first = try conditional()
        guard allowTuple, isOp(",") else { return first }
        var items = [first]
        while isOp(",") { i += 1; if atEnd { break }; items.append(try conditional()) }
        return .list(items)
    }

    mutating func conditional() throws -> JinjaExpr {
        try enter(); defer { depth -= 1 }
        var e = try or()
        var n = 0; defer { depth -= n }
        while isName("if") {
            try link(&n)
            i += 1
            let cond = try or()
            var otherwise: JinjaExpr? = nil
            if isName("else") { i += 1; otherwise = try conditional() }
            e = .conditional(e, condition: cond, otherwise: otherwise)
        }
        return e
    }

    /// A left-nested chain (`a + b + c …`, `x.y.z …`) is as deep as it is long: each link counts as a level.
    mutating func link(_ n: inout Int) throws { try enter(); n += 1 }

    mutating func or() throws -> JinjaExpr {
        var e = try and()
        var n = 0; defer { depth -= n }
        while isName("or") { try link(&n); i += 1; e = .or(e, try and()) }
        return e
    }

    mutating func and() throws -> JinjaExpr {
        var e = try not()
        var n = 0; defer { depth -= n }
        while isName("and") { try link(&n); i += 1; e = .and(e, try not()) }
        return e
    }

    mutating func not() throws -> JinjaExpr {
        if isName("not") {
            try enter(); defer { depth -= 1 }
            i += 1
            return .not(try not())
        }
        return try compare()
    }

    mutating func compare() throws -> JinjaExpr {
        var e = try math1()
        var n = 0; defer { depth -= n }
        while true {
            try link(&n)
            if case .op(let o)? = peek(), ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                i += 1; e = .binary(o, e, try math1())
            } else if isName("in") {
                i += 1; e = .binary("in", e, try math1())
            } else if isName("not"), isName("in", 1) {
                i += 2; e = .binary("not in", e, try math1())
            } else {
                return e
            }
        }
    }

    mutating func math1() throws -> JinjaExpr {
        var e = try concat()
        var n = 0; defer { depth -= n }
        while case .op(let o)? = peek(), o == "+" || o == "-" { try link(&n); i += 1; e = .binary(o, e, try concat()) }
        return e
    }

    mutating func concat() throws -> JinjaExpr {
        var e = try math2()
        var n = 0; defer { depth -= n }
        while isOp("~") { try link(&n); i += 1; e = .binary("~", e, try math2()) }
        return e
    }

    mutating func math2() throws -> JinjaExpr {
        var e = try pow()
        var n = 0; defer { depth -= n }
        while case .op(let o)? = peek(), ["*", "/", "//", "%"].contains(o) { try link(&n); i += 1; e = .binary(o, e, try pow()) }
        return e
    }

    mutating func pow() throws -> JinjaExpr {
        var e = try unary()
        var n = 0; defer { depth -= n }
        while isOp("**") { try link(&n); i += 1; e = .binary("**", e, try unary()) }
        return e
    }

    mutating func unary(withFilter: Bool = true) throws -> JinjaExpr {
        try enter(); defer { depth -= 1 }
        var e: JinjaExpr
        if isOp("-") { i += 1; e = .negate(try unary(withFilter: false)) }
        else if isOp("+") { i += 1; e = .plus(try unary(withFilter: false)) }
        else { e = try primary() }
        e = try postfix(e)
        if withFilter { e = try filterTests(e) }
        return e
    }

    mutating func primary() throws -> JinjaExpr {
        guard let t = peek() else { throw fail("expected an expression, found the end of the tag") }
        i += 1
        switch t {
        case .string(var s):
            while case .string(let more)? = peek() { s += more; i += 1 }  // adjacent literals concatenate
            return .literal(.string(s))
        case .int(let n): return .literal(.int(n))
        case .float(let f): return .literal(.float(f))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            if isOp(")") { i += 1; return .list([]) }
            let e = try expression(allowTuple: true)
            try expectOp(")")
            return e
        case .op("["):
            var items: [JinjaExpr] = []
            while !isOp("]") {
                items.append(try expression())
                if isOp(",") { i += 1 } else { break }
            }
            try expectOp("]")
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !isOp("}") {
                let k = try expression()
                try expectOp(":")
                pairs.append((k, try expression()))
                if isOp(",") { i += 1 } else { break }
            }
            try expectOp("}")
            return .dict(pairs)
        default:
            i -= 1
            throw fail("unexpected \(describe(t)) where an expression should start")
        }
    }

    mutating func postfix(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        var n = 0; defer { depth -= n }
        while true {
            try link(&n)
            if isOp(".") {
                i += 1
                if case .int(let n)? = peek() { i += 1; e = .item(e, .literal(.int(n))); continue }
                e = .attribute(e, try name())
            } else if isOp("[") {
                i += 1
                e = try subscriptOrSlice(e)
            } else if isOp("(") {
                let (args, kwargs) = try callArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    mutating func subscriptOrSlice(_ base: JinjaExpr) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = [nil]
        var isSlice = false
        while !isOp("]") {
            if isOp(":") {
                isSlice = true; i += 1; parts.append(nil)
                guard parts.count <= 3 else { throw fail("a slice has at most three parts") }
            } else {
                guard parts[parts.count - 1] == nil else { throw fail("expected ':' or ']' in a subscript, found \(describe(peek()))") }
                parts[parts.count - 1] = try expression()
            }
        }
        try expectOp("]")
        if !isSlice {
            guard let index = parts[0] else { throw fail("an empty subscript []") }
            return .item(base, index)
        }
        while parts.count < 3 { parts.append(nil) }
        return .slice(base, parts[0], parts[1], parts[2])
    }

    mutating func callArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try expectOp("(")
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        while !isOp(")") {
            if case .name(let n)? = peek(), isOp("=", 1) {
                i += 2
                kwargs.append((n, try expression()))
            } else {
                guard kwargs.isEmpty else { throw fail("a positional argument follows a keyword argument") }
                args.append(try expression())
            }
            if isOp(",") { i += 1 } else { break }
        }
        try expectOp(")")
        return (args, kwargs)
    }

    mutating func filterTests(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        var n = 0; defer { depth -= n }
        while true {
            try link(&n)
            if isOp("|") {
                i += 1
                var n = try name()
                while isOp("."), case .name(let more)? = peek(1) { i += 2; n += "." + more }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if isOp("(") { (args, kwargs) = try callArguments() }
                e = .filter(e, n, args, kwargs)
            } else if isName("is") {
                i += 1
                var negated = false
                if isName("not") { negated = true; i += 1 }
                let n = try name()
                var args: [JinjaExpr] = []
                if isOp("(") {
                    let (a, kw) = try callArguments()
                    guard kw.isEmpty else { throw fail("the test '\(n)' takes no keyword arguments") }
                    args = a
                } else if let t = peek(), startsTestArgument(t) {
                    args = [try postfix(try primary())]
                }
                e = .test(e, n, args, negated: negated)
            } else if isOp("(") {
                let (args, kwargs) = try callArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    func startsTestArgument(_ t: JinjaToken) -> Bool {
        switch t {
        case .string, .int, .float: return true
        case .op(let o): return o == "[" || o == "{"
        case .name(let n): return !["and", "or", "else", "if", "in", "not", "is", "recursive"].contains(n)
        }
    }
}

struct JinjaParser {
    static let maxNesting = 100
    var pieces: [JinjaPiece]
    var i = 0
    var nesting = 0

    /// Parses statements until one of `ends` (returned with its tag) or the end of the template.
    mutating func body(until ends: Set<String>, opened: (String, Int)? = nil) throws -> ([JinjaNode], String?, JinjaLexedTag?) {
        var nodes: [JinjaNode] = []
        while i < pieces.count {
            let piece = pieces[i]
            i += 1
            switch piece {
            case .text(let s):
                nodes.append(.text(s))
            case .output(let tag):
                var p = JinjaExprParser(tag)
                let e = try p.expression(allowTuple: true)
                guard p.atEnd else { throw p.fail("unexpected \(p.describe(p.peek())) in {{ … }}") }
                nodes.append(.output(e, line: tag.line))
            case .statement(let tag):
                guard case .name(let keyword)? = tag.tokens.first else {
                    throw JinjaError.at(tag.line, "a {% … %} tag must start with a statement name")
                }
                if ends.contains(keyword) { return (nodes, keyword, tag) }
                nodes.append(try statement(keyword, tag))
            }
        }
        if let (what, line) = opened {
            throw JinjaError.at(line, "{% \(what) %} is never closed (expected {% \(ends.sorted().joined(separator: " or ")) %})")
        }
        return (nodes, nil, nil)
    }

    mutating func nested<T>(_ what: String, _ line: Int, _ f: (inout JinjaParser) throws -> T) throws -> T {
        nesting += 1
        defer { nesting -= 1 }
        guard nesting <= Self.maxNesting else { throw JinjaError.at(line, "blocks nested more than \(Self.maxNesting) deep") }
        return try f(&self)
    }

    func finish(_ p: JinjaExprParser, _ what: String) throws {
        guard p.atEnd else { throw p.fail("unexpected \(p.describe(p.peek())) in {% \(what) %}") }
    }

    mutating func statement(_ keyword: String, _ tag: JinjaLexedTag) throws -> JinjaNode {
        var p = JinjaExprParser(tag, from: 1)
        let line = tag.line
        switch keyword {
        case "if":
            return try nested("if", line) { parser in
                var branches: [(JinjaExpr, [JinjaNode])] = []
                var cond = try p.expression()
                try parser.finish(p, "if")
                while true {
                    let (nodes, end, endTag) = try parser.body(until: ["elif", "else", "endif"], opened: ("if", line))
                    branches.append((cond, nodes))
                    if end == "elif", let endTag {
                        var q = JinjaExprParser(endTag, from: 1)
                        cond = try q.expression()
                        try parser.finish(q, "elif")
                        continue
                    }
                    var otherwise: [JinjaNode]? = nil
                    if end == "else" {
                        try parser.finish(JinjaExprParser(endTag!, from: 1), "else")
                        let (nodes, _, endifTag) = try parser.body(until: ["endif"], opened: ("else", endTag!.line))
                        try parser.finish(JinjaExprParser(endifTag!, from: 1), "endif")
                        otherwise = nodes
                    } else {
                        try parser.finish(JinjaExprParser(endTag!, from: 1), "endif")
                    }
                    return .conditional(branches, otherwise: otherwise, line: line)
                }
            }
        case "for":
            return try nested("for", line) { parser in
                var targets = [try p.name()]
                while p.isOp(",") { p.i += 1; targets.append(try p.name()) }
                guard p.isName("in") else { throw p.fail("expected 'in' in {% for %}, found \(p.describe(p.peek()))") }
                p.i += 1
                // The iterable stops before a loop filter `if …` (a conditional expression is not allowed here).
                let iterable = try p.or()
                var filter: JinjaExpr? = nil
                if p.isName("if") { p.i += 1; filter = try p.expression() }
                if p.isName("recursive") { throw p.fail("recursive loops are not supported") }
                try parser.finish(p, "for")
                let (nodes, end, endTag) = try parser.body(until: ["else", "endfor"], opened: ("for", line))
                var otherwise: [JinjaNode]? = nil
                if end == "else" {
                    try parser.finish(JinjaExprParser(endTag!, from: 1), "else")
                    let (o, _, _) = try parser.body(until: ["endfor"], opened: ("for … else", endTag!.line))
                    otherwise = o
                }
                return .loop(targets: targets, iterable: iterable, filter: filter, body: nodes, otherwise: otherwise, line: line)
            }
        case "set":
            var targets = [try p.name()]
            var attribute: String? = nil
            if p.isOp(".") { p.i += 1; attribute = try p.name() }
            while attribute == nil, p.isOp(",") { p.i += 1; targets.append(try p.name()) }
            if p.atEnd {
                guard attribute == nil, targets.count == 1 else { throw p.fail("a {% set %} block assigns one plain name") }
                return try nested("set", line) { parser in
                    let (nodes, _, _) = try parser.body(until: ["endset"], opened: ("set", line))
                    return .assignBlock(targets[0], nodes, line: line)
                }
            }
            try p.expectOp("=")
            let value = try p.expression(allowTuple: true)
            try finish(p, "set")
            return .assign(targets: targets, attribute: attribute, value: value, line: line)
        case "macro":
            return try nested("macro", line) { parser in
                let name = try p.name()
                try p.expectOp("(")
                var params: [(String, JinjaExpr?)] = []
                while !p.isOp(")") {
                    let n = try p.name()
                    var d: JinjaExpr? = nil
                    if p.isOp("=") { p.i += 1; d = try p.expression() }
                    params.append((n, d))
                    if p.isOp(",") { p.i += 1 } else { break }
                }
                try p.expectOp(")")
                try parser.finish(p, "macro")
                let (nodes, _, _) = try parser.body(until: ["endmacro"], opened: ("macro", line))
                return .macro(JinjaMacro(name: name, parameters: params, body: nodes), line: line)
            }
        case "break":
            try finish(p, "break")
            return .loopBreak(line: line)
        case "continue":
            try finish(p, "continue")
            return .loopContinue(line: line)
        case "generation":
            // transformers' extension marking assistant text: rendered as its body.
            try finish(p, "generation")
            return try nested("generation", line) { parser in
                let (nodes, _, _) = try parser.body(until: ["endgeneration"], opened: ("generation", line))
                return .block(nodes)
            }
        case "elif", "else", "endif", "endfor", "endset", "endmacro", "endgeneration":
            throw JinjaError.at(line, "{% \(keyword) %} without a matching opening tag")
        default:
            throw JinjaError.at(line, "the statement {% \(keyword) %} is not supported")
        }
    }
}

// MARK: - Rendering

/// A parsed template. `render` is a pure function of the context and `now` (what `strftime_now` reads).
public struct JinjaTemplate {
    public let source: String
    let nodes: [JinjaNode]

    public init(_ source: String) throws {
        self.source = source
        var lexer = JinjaLexer(source)
        var parser = JinjaParser(pieces: try lexer.lex())
        let (nodes, end, tag) = try parser.body(until: [])
        if let end, let tag { throw JinjaError.at(tag.line, "unexpected {% \(end) %}") }
        self.nodes = nodes
    }

    /// Does the template call `strftime_now` (so its output depends on the date)?
    public var readsClock: Bool { source.contains("strftime_now") }

    public func render(_ context: [String: JinjaValue], now: Date = Date(), timeZone: TimeZone = .current) throws -> String {
        let r = JinjaRenderer(context: context, now: now, timeZone: timeZone)
        _ = try r.run(nodes)
        return r.out
    }
}

final class JinjaRenderer {
    static let maxOutput = 16 << 20
    static let maxIterations = 1_000_000
    static let maxCallDepth = 64
    /// Elements of lists and dicts a render may create or walk (bounds the time of list-building loops).
    static let maxWork = 20_000_000
    var work = 0

    func spend(_ n: Int) throws {
        work += n
        guard work <= Self.maxWork else { throw fail("the template built more than \(Self.maxWork) list or dict elements") }
    }

    /// A value stored in a variable or namespace must be nested at most `JinjaValue.maxNesting` deep: stores
    /// are the only way a template accumulates nesting (in a loop), and a deeper value could not even be freed
    /// without exhausting the stack.
    func checkNesting(_ v: JinjaValue, _ depth: Int = 0) throws {
        guard depth <= JinjaValue.maxNesting else { throw fail("a value nested more than \(JinjaValue.maxNesting) deep") }
        switch v {
        case .list(let l):
            try spend(l.count)
            for x in l { try checkNesting(x, depth + 1) }
        case .dict(let d):
            try spend(d.keys.count)
            for (_, x) in d.pairs { try checkNesting(x, depth + 1) }
        case .namespace(let ns):
            try spend(ns.attributes.keys.count)
            for (_, x) in ns.attributes.pairs { try checkNesting(x, depth + 1) }
        default: break
        }
    }

    var scopes: [[String: JinjaValue]]
    var out = ""
    var outBytes = 0
    var iterations = 0
    var callDepth = 0
    var line = 0
    let now: Date
    let timeZone: TimeZone

    init(context: [String: JinjaValue], now: Date, timeZone: TimeZone) {
        scopes = [context, [:]]
        self.now = now; self.timeZone = timeZone
    }

    enum Flow { case normal, breakLoop, continueLoop }

    func fail(_ message: String) -> JinjaError { JinjaError.at(line, message) }

    /// A string a template builds may not outgrow the output limit (doubling it in a loop would exhaust memory).
    func sized(_ s: String) throws -> String {
        guard s.utf8.count <= Self.maxOutput else { throw fail("a string grew past \(Self.maxOutput) bytes") }
        return s
    }

    func emit(_ s: String) throws {
        outBytes += s.utf8.count
        guard outBytes <= Self.maxOutput else { throw fail("the output grew past \(Self.maxOutput) bytes") }
        out += s
    }

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        switch name {
        case "raise_exception", "strftime_now", "range", "namespace", "dict": return .builtin(name)
        default: return .undefined(name)
        }
    }

    func assign(_ name: String, _ value: JinjaValue) { scopes[scopes.count - 1][name] = value }

    func run(_ nodes: [JinjaNode]) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let s):
                try emit(s)
            case .output(let e, let l):
                line = l
                try emit(try string(try eval(e)))
            case .conditional(let branches, let otherwise, let l):
                line = l
                var taken = false
                for (cond, body) in branches {
                    line = l
                    if try eval(cond).truthy {
                        taken = true
                        let f = try run(body)
                        if f != .normal { return f }
                        break
                    }
                }
                if !taken, let otherwise {
                    let f = try run(otherwise)
                    if f != .normal { return f }
                }
            case .loop(let targets, let iterable, let filter, let body, let otherwise, let l):
                line = l
                try runLoop(targets: targets, items: try iterate(try eval(iterable)), filter: filter, body: body, otherwise: otherwise, line: l)
            case .assign(let targets, let attribute, let value, let l):
                line = l
                let v = try eval(value)
                if let attribute {
                    guard case .namespace(let ns) = lookup(targets[0]) else {
                        throw fail("{% set \(targets[0]).\(attribute) = … %} needs '\(targets[0])' to be a namespace()")
                    }
                    ns.attributes[attribute] = v
                    do { try checkNesting(.namespace(ns)) } catch {   // too deep, or the namespace now contains itself
                        ns.attributes[attribute] = JinjaValue.none
                        throw error
                    }
                } else if targets.count == 1 {
                    try checkNesting(v)
                    assign(targets[0], v)
                } else {
                    let items = try iterate(v)
                    guard items.count == targets.count else {
                        throw fail("{% set %} unpacks \(items.count) values into \(targets.count) names")
                    }
                    for (t, x) in zip(targets, items) { try checkNesting(x); assign(t, x) }
                }
            case .assignBlock(let name, let body, let l):
                line = l
                let saved = (out, outBytes)
                out = ""
                _ = try run(body)
                let captured = out
                (out, outBytes) = (saved.0, saved.1 + captured.utf8.count)
                assign(name, .string(captured))
            case .macro(let m, _):
                assign(m.name, .macro(m))
            case .loopBreak(let l):
                line = l
                return .breakLoop
            case .loopContinue(let l):
                line = l
                return .continueLoop
            case .block(let body):
                let f = try run(body)
                if f != .normal { return f }
            }
        }
        return .normal
    }

    func bind(_ targets: [String], _ item: JinjaValue) throws {
        if targets.count == 1 { assign(targets[0], item); return }
        let parts = try iterate(item)
        guard parts.count == targets.count else {
            throw fail("the loop unpacks \(parts.count) values into \(targets.count) names (\(targets.joined(separator: ", ")))")
        }
        for (t, x) in zip(targets, parts) { assign(t, x) }
    }

    func runLoop(targets: [String], items all: [JinjaValue], filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode]?, line l: Int) throws {
        var items = all
        if let filter {
            items = []
            for item in all {
                try tick()
                scopes.append([:])
                defer { scopes.removeLast() }
                try bind(targets, item)
                line = l
                if try eval(filter).truthy { items.append(item) }
            }
        }
        if items.isEmpty {
            if let otherwise { _ = try run(otherwise) }
            return
        }
        let n = items.count
        for (k, item) in items.enumerated() {
            try tick()
            var loop = JinjaDict()
            loop["index"] = .int(k + 1); loop["index0"] = .int(k)
            loop["revindex"] = .int(n - k); loop["revindex0"] = .int(n - k - 1)
            loop["first"] = .bool(k == 0); loop["last"] = .bool(k == n - 1); loop["length"] = .int(n)
            loop["previtem"] = k > 0 ? items[k - 1] : .undefined("loop.previtem")
            loop["nextitem"] = k + 1 < n ? items[k + 1] : .undefined("loop.nextitem")
            loop["depth"] = .int(1); loop["depth0"] = .int(0)
            scopes.append(["loop": .dict(loop)])
            defer { scopes.removeLast() }
            try bind(targets, item)
            let f = try run(body)
            if f == .breakLoop { break }
        }
    }

    func tick() throws {
        iterations += 1
        guard iterations <= Self.maxIterations else { throw fail("the template ran more than \(Self.maxIterations) loop iterations") }
    }

    // MARK: Values

    func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .list(let l): return l
        case .dict(let d): try spend(d.keys.count); return d.keys.map { .string($0) }
        case .string(let s): try spend(s.utf8.count); return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        default: throw fail("'\(v.typeName)' object is not iterable")
        }
    }

    func string(_ v: JinjaValue) throws -> String {
        switch v {
        case .undefined: return ""
        case .string(let s): return s
        default: return try JinjaFormat.str(v)
        }
    }

    func undefinedError(_ v: JinjaValue) -> JinjaError {
        if case .undefined(let name) = v { return fail("'\(name)' is undefined") }
        return fail("undefined value")
    }

    func eval(_ e: JinjaExpr) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items):
            try spend(items.count)
            return .list(try items.map { try eval($0) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                guard case .string(let key) = try eval(k) else { throw fail("dictionary keys must be strings here") }
                d[key] = try eval(v)
            }
            return .dict(d)
        case .attribute(let base, let name):
            let b = try eval(base)
            return try attribute(b, name, described: describe(base) + "." + name)
        case .item(let base, let index):
            let b = try eval(base)
            return try item(b, try eval(index), described: describe(base))
        case .slice(let base, let start, let stop, let step):
            return try slice(try eval(base), try start.map { try eval($0) }, try stop.map { try eval($0) }, try step.map { try eval($0) })
        case .call(let callee, let args, let kwargs):
            let a = try args.map { try eval($0) }
            var kw: [(String, JinjaValue)] = []
            for (k, v) in kwargs { kw.append((k, try eval(v))) }
            if case .attribute(let base, let method) = callee {
                let b = try eval(base)
                if case .undefined = b { throw undefinedError(b) }
                if let r = try JinjaMethods.call(b, method, a, kw, self) { return r }
                let f = try attribute(b, method, described: describe(base) + "." + method)
                return try call(f, a, kw, described: describe(callee))
            }
            return try call(try eval(callee), a, kw, described: describe(callee))
        case .filter(let base, let name, let args, let kwargs):
            let b = try eval(base)
            let a = try args.map { try eval($0) }
            var kw: [(String, JinjaValue)] = []
            for (k, v) in kwargs { kw.append((k, try eval(v))) }
            return try JinjaFilters.apply(name, b, a, kw, self)
        case .test(let base, let name, let args, let negated):
            let r = try JinjaFilters.test(name, try eval(base), try args.map { try eval($0) }, self)
            return .bool(r != negated)
        case .negate(let x):
            switch try eval(x) {
            case .int(let i):
                guard i != .min else { throw fail("integer overflow") }
                return .int(-i)
            case .float(let f): return .float(-f)
            case .bool(let b): return .int(b ? -1 : 0)
            case let v: throw fail("bad operand type for unary -: '\(v.typeName)'")
            }
        case .plus(let x):
            let v = try eval(x)
            guard v.number != nil else { throw fail("bad operand type for unary +: '\(v.typeName)'") }
            return v
        case .not(let x): return .bool(!(try eval(x).truthy))
        case .and(let a, let b):
            let x = try eval(a)
            return x.truthy ? try eval(b) : x
        case .or(let a, let b):
            let x = try eval(a)
            return x.truthy ? x : try eval(b)
        case .conditional(let then, let cond, let otherwise):
            if try eval(cond).truthy { return try eval(then) }
            return try otherwise.map { try eval($0) } ?? .undefined("the missing else branch")
        case .binary(let op, let a, let b):
            return try binary(op, try eval(a), try eval(b))
        }
    }

    func describe(_ e: JinjaExpr) -> String {
        switch e {
        case .name(let n): return n
        case .attribute(let b, let n): return describe(b) + "." + n
        case .item(let b, .literal(.string(let k))): return describe(b) + "['" + k + "']"
        case .item(let b, .literal(.int(let k))): return describe(b) + "[\(k)]"
        case .item(let b, _): return describe(b) + "[…]"
        case .call(let c, _, _): return describe(c) + "(…)"
        default: return "the expression"
        }
    }

    func attribute(_ b: JinjaValue, _ name: String, described: String) throws -> JinjaValue {
        switch b {
        case .undefined: throw undefinedError(b)
        case .dict(let d): return d[name] ?? .undefined(described)
        case .namespace(let ns): return ns.attributes[name] ?? .undefined(described)
        default: return .undefined(described)
        }
    }

    func item(_ b: JinjaValue, _ index: JinjaValue, described: String) throws -> JinjaValue {
        switch (b, index) {
        case (.undefined, _): throw undefinedError(b)
        case (.dict(let d), .string(let k)): return d[k] ?? .undefined(described + "['" + k + "']")
        case (.namespace(let ns), .string(let k)): return ns.attributes[k] ?? .undefined(described + "['" + k + "']")
        case (.list(let l), _):
            guard let i = intIndex(index) else { return .undefined(described + "[…]") }
            let j = i < 0 ? l.count + i : i
            return j >= 0 && j < l.count ? l[j] : .undefined(described + "[\(i)]")
        case (.string(let s), _):
            guard let i = intIndex(index) else { return .undefined(described + "[…]") }
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return j >= 0 && j < u.count ? .string(String(u[j])) : .undefined(described + "[\(i)]")
        default: return .undefined(described)
        }
    }

    func intIndex(_ v: JinjaValue) -> Int? {
        switch v {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    func slice(_ b: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        func bound(_ v: JinjaValue?) throws -> Int? {
            guard let v else { return nil }
            if case .none = v { return nil }
            guard let i = intIndex(v) else { throw fail("slice indices must be integers or none, not '\(v.typeName)'") }
            return i
        }
        let st = try bound(step) ?? 1
        guard st != 0 else { throw fail("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ i: Int?, _ dflt: Int, low: Int, high: Int) -> Int {
                guard var i else { return dflt }
                if i < 0 { i = i < -n ? low : n + i }
                return min(max(i, low), high)
            }
            if st > 0 {
                let a = clamp(try bound(start), 0, low: 0, high: n), z = clamp(try bound(stop), n, low: 0, high: n)
                return a < z ? Array(stride(from: a, to: z, by: st)) : []
            }
            let a = clamp(try bound(start), n - 1, low: -1, high: n - 1), z = clamp(try bound(stop), -1, low: -1, high: n - 1)
            return a > z ? Array(stride(from: a, to: z, by: st)) : []
        }
        switch b {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            var v = String.UnicodeScalarView()
            for i in try indices(u.count) { v.append(u[i]) }
            return .string(String(v))
        case .undefined: throw undefinedError(b)
        default: throw fail("'\(b.typeName)' object is not subscriptable")
        }
    }

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(!(a == b))
        case "in", "not in":
            let r: Bool
            switch b {
            case .string(let s):
                guard case .string(let x) = a else { throw fail("'in <string>' requires a string on the left, not '\(a.typeName)'") }
                r = x.isEmpty || s.contains(x)
            case .list(let l): r = l.contains { $0 == a }
            case .dict(let d):
                if case .string(let k) = a { r = d[k] != nil } else { r = false }
            case .undefined: throw undefinedError(b)
            default: throw fail("argument of type '\(b.typeName)' is not iterable")
            }
            return .bool(op == "in" ? r : !r)
        case "~": return .string(try sized(try string(a) + string(b)))
        case "<", "<=", ">", ">=":
            let c: Int
            if case .string(let x) = a, case .string(let y) = b {
                c = x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars, by: { $0.value < $1.value }) ? -1
                    : (x.unicodeScalars.elementsEqual(y.unicodeScalars) ? 0 : 1)
            } else if let x = a.number, let y = b.number {
                c = x < y ? -1 : (x == y ? 0 : 1)
            } else {
                if case .undefined = a { throw undefinedError(a) }
                if case .undefined = b { throw undefinedError(b) }
                throw fail("'\(op)' is not supported between '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "<": return .bool(c < 0)
            case "<=": return .bool(c <= 0)
            case ">": return .bool(c > 0)
            default: return .bool(c >= 0)
            }
        default:
            return try arithmetic(op, a, b)
        }
    }

    func arithmetic(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        if case .undefined = a { throw undefinedError(a) }
        if case .undefined = b { throw undefinedError(b) }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)): return .string(try sized(x + y))
        case ("+", .list(let x), .list(let y)):
            guard x.count + y.count <= Self.maxIterations else { throw fail("a list of more than \(Self.maxIterations) items") }
            try spend(x.count + y.count)
            return .list(x + y)
        case ("*", .string(let s), _), ("*", _, .string(let s)):
            guard let n = intIndex(op == "*" && a.typeName == "str" ? b : a) else { break }
            guard n <= 0 || s.utf8.count.multipliedReportingOverflow(by: n).partialValue <= Self.maxOutput,
                  !s.utf8.count.multipliedReportingOverflow(by: max(n, 0)).overflow else { throw fail("a string repeated \(n) times is too long") }
            return .string(n <= 0 ? "" : String(repeating: s, count: n))
        case ("*", .list(let l), _), ("*", _, .list(let l)):
            guard let n = intIndex(a.typeName == "list" ? b : a) else { break }
            guard n <= 0 || l.count.multipliedReportingOverflow(by: n).partialValue <= Self.maxIterations,
                  !l.count.multipliedReportingOverflow(by: max(n, 0)).overflow else { throw fail("a list repeated \(n) times is too long") }
            try spend(max(n, 0) * l.count)
            return .list(n <= 0 ? [] : Array((0..<n).map { _ in l }.joined()))
        default: break
        }
        let ints: (Int, Int)? = {
            switch (a, b) {
            case (.int, .int), (.int, .bool), (.bool, .int), (.bool, .bool): return (intIndex(a)!, intIndex(b)!)
            default: return nil
            }
        }()
        if let (x, y) = ints {
            switch op {
            case "+": let r = x.addingReportingOverflow(y); if !r.overflow { return .int(r.partialValue) }
            case "-": let r = x.subtractingReportingOverflow(y); if !r.overflow { return .int(r.partialValue) }
            case "*": let r = x.multipliedReportingOverflow(by: y); if !r.overflow { return .int(r.partialValue) }
            case "//", "%":
                guard y != 0 else { throw fail("integer division or modulo by zero") }
                guard !(x == .min && y == -1) else { break }
                var q = x / y, m = x % y
                if m != 0, (m < 0) != (y < 0) { q -= 1; m += y }
                return .int(op == "//" ? q : m)
            case "/":
                guard y != 0 else { throw fail("division by zero") }
                return .float(Double(x) / Double(y))
            case "**":
                guard y >= 0 else { return .float(Foundation.pow(Double(x), Double(y))) }
                var r = 1, overflow = false
                for _ in 0..<min(y, 64) where !overflow { let m = r.multipliedReportingOverflow(by: x); r = m.partialValue; overflow = m.overflow }
                if !overflow, y <= 64 || x == 0 || x == 1 { return .int(r) }
            default: break
            }
            throw fail("integer overflow in \(x) \(op) \(y)")
        }
        if let x = a.number, let y = b.number {
            switch op {
            case "+": return .float(x + y)
            case "-": return .float(x - y)
            case "*": return .float(x * y)
            case "/": guard y != 0 else { throw fail("division by zero") }; return .float(x / y)
            case "//": guard y != 0 else { throw fail("division by zero") }; return .float((x / y).rounded(.down))
            case "%": guard y != 0 else { throw fail("modulo by zero") }; let m = x.truncatingRemainder(dividingBy: y); return .float(m != 0 && (m < 0) != (y < 0) ? m + y : m)
            case "**": return .float(Foundation.pow(x, y))
            default: break
            }
        }
        throw fail("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }

    func call(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], described: String) throws -> JinjaValue {
        switch f {
        case .builtin(let name):
            switch name {
            case "raise_exception":
                throw JinjaError(kind: .raised, message: try args.first.map { try string($0) } ?? "", line: line)
            case "strftime_now":
                guard args.count == 1, case .string(let format) = args[0] else { throw fail("strftime_now takes one format string") }
                return .string(try JinjaFormat.strftime(format, now, timeZone, self))
            case "range":
                let ints = try args.map { v -> Int in
                    guard let i = intIndex(v) else { throw fail("range() takes integers, not '\(v.typeName)'") }
                    return i
                }
                let (a, z, s): (Int, Int, Int)
                switch ints.count {
                case 1: (a, z, s) = (0, ints[0], 1)
                case 2: (a, z, s) = (ints[0], ints[1], 1)
                case 3: (a, z, s) = (ints[0], ints[1], ints[2])
                default: throw fail("range() takes 1 to 3 arguments")
                }
                guard s != 0 else { throw fail("range() step must not be zero") }
                let count = s > 0 ? (z > a ? (z - a - 1) / s + 1 : 0) : (a > z ? (a - z - 1) / -s + 1 : 0)
                guard count <= Self.maxIterations else { throw fail("range() of \(count) items is too long") }
                try spend(count)
                return .list((0..<count).map { .int(a + $0 * s) })
            case "namespace", "dict":
                var d = JinjaDict()
                for a in args {
                    guard case .dict(let x) = a else { throw fail("\(name)() takes a mapping or keyword arguments") }
                    for (k, v) in x.pairs { d[k] = v }
                }
                for (k, v) in kwargs { d[k] = v }
                try checkNesting(.dict(d))
                return name == "dict" ? .dict(d) : .namespace(JinjaNamespace(d))
            default: break
            }
        case .macro(let m):
            callDepth += 1
            defer { callDepth -= 1 }
            guard callDepth <= Self.maxCallDepth else { throw fail("macro calls nested more than \(Self.maxCallDepth) deep") }
            guard args.count <= m.parameters.count else { throw fail("macro '\(m.name)' takes \(m.parameters.count) arguments, got \(args.count)") }
            var frame: [String: JinjaValue] = [:]
            for (k, (pname, dflt)) in m.parameters.enumerated() {
                if k < args.count { frame[pname] = args[k] }
                else if let v = kwargs.first(where: { $0.0 == pname })?.1 { frame[pname] = v }
                else if let dflt { frame[pname] = try eval(dflt) }
                else { frame[pname] = .undefined(pname) }
            }
            for (k, _) in kwargs where !m.parameters.contains(where: { $0.0 == k }) {
                throw fail("macro '\(m.name)' has no parameter '\(k)'")
            }
            let savedScopes = scopes, savedOut = out, savedLine = line
            scopes = Array(scopes.prefix(2)) + [frame]
            out = ""
            defer { scopes = savedScopes }
            _ = try run(m.body)
            let result = out
            out = savedOut
            line = savedLine
            return .string(result)
        case .undefined: throw fail("'\(described)' is undefined (not a function this renderer knows)")
        default: break
        }
        throw fail("'\(described)' (\(f.typeName)) is not callable")
    }
}

// MARK: - Formatting: Python's str/repr, transformers' tojson, strftime

enum JinjaFormat {
    static func pythonFloat(_ f: Double) -> String {
        if f.isNaN { return "nan" }
        if f.isInfinite { return f < 0 ? "-inf" : "inf" }
        if f == f.rounded(), abs(f) < 1e16 { return String(format: "%.1f", f) }
        return "\(f)"
    }

    /// Python's `str(v)`.
    static func str(_ v: JinjaValue, depth: Int = 0) throws -> String {
        guard depth < JinjaValue.maxNesting else {
            throw JinjaError(kind: .template, message: "a value nested more than \(JinjaValue.maxNesting) deep cannot be printed", line: nil)
        }
        func repr(_ v: JinjaValue) throws -> String { try JinjaFormat.repr(v, depth: depth + 1) }
        func str(_ v: JinjaValue) throws -> String { try JinjaFormat.str(v, depth: depth + 1) }
        switch v {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .float(let f): return pythonFloat(f)
        case .string(let s): return s
        case .list(let l): return "[" + (try l.map(repr).joined(separator: ", ")) + "]"
        case .dict(let d): return "{" + (try d.pairs.map { "\(try repr(.string($0.0))): \(try repr($0.1))" }.joined(separator: ", ")) + "}"
        case .namespace(let ns): return "<Namespace " + (try str(.dict(ns.attributes))) + ">"
        case .macro(let m): return "<Macro '\(m.name)'>"
        case .builtin(let n): return "<function \(n)>"
        }
    }

    /// Python's `repr(v)`.
    static func repr(_ v: JinjaValue, depth: Int = 0) throws -> String {
        guard case .string(let s) = v else { return try str(v, depth: depth) }
        let quote: Unicode.Scalar = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"") ? "\"" : "'"
        var out = String.UnicodeScalarView()
        out.append(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            case quote: out.append("\\"); out.append(u)
            default:
                if u.value < 0x20 || u.value == 0x7F || (0x80..<0xA0).contains(u.value) {
                    out.append(contentsOf: String(format: "\\x%02x", u.value).unicodeScalars)
                } else {
                    out.append(u)
                }
            }
        }
        out.append(quote)
        return String(out)
    }

    /// transformers' tojson: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`.
    static func json(_ v: JinjaValue, indent: Int?, separators: (String, String)?, sortKeys: Bool, depth: Int = 0, r: JinjaRenderer) throws -> String {
        guard depth < 100 else { throw r.fail("tojson: the value is nested more than 100 deep") }
        let (itemSep, keySep) = separators ?? (indent == nil ? (", ", ": ") : (",", ": "))
        func wrap(_ open: String, _ parts: [String], _ close: String) -> String {
            if parts.isEmpty { return open + close }
            guard let indent else { return open + parts.joined(separator: itemSep) + close }
            let inner = "\n" + String(repeating: " ", count: indent * (depth + 1))
            let outer = "\n" + String(repeating: " ", count: indent * depth)
            return open + inner + parts.joined(separator: itemSep + inner) + outer + close
        }
        switch v {
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .float(let f):
            if f.isNaN { return "NaN" }
            if f.isInfinite { return f < 0 ? "-Infinity" : "Infinity" }
            return pythonFloat(f)
        case .string(let s): return jsonString(s)
        case .list(let l):
            return wrap("[", try l.map { try json($0, indent: indent, separators: separators, sortKeys: sortKeys, depth: depth + 1, r: r) }, "]")
        case .dict(let d):
            var pairs = d.pairs
            if sortKeys { pairs.sort { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) { $0.value < $1.value } } }
            return wrap("{", try pairs.map { jsonString($0.0) + keySep + (try json($0.1, indent: indent, separators: separators, sortKeys: sortKeys, depth: depth + 1, r: r)) }, "}")
        default:
            throw r.fail("tojson: Object of type \(v.typeName) is not JSON serializable")
        }
    }

    static func jsonString(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        out.append("\"")
        for u in s.unicodeScalars {
            switch u {
            case "\"": out.append(contentsOf: "\\\"".unicodeScalars)
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            case "\u{08}": out.append(contentsOf: "\\b".unicodeScalars)
            case "\u{0C}": out.append(contentsOf: "\\f".unicodeScalars)
            default:
                if u.value < 0x20 { out.append(contentsOf: String(format: "\\u%04x", u.value).unicodeScalars) } else { out.append(u) }
            }
        }
        out.append("\"")
        return String(out)
    }

    static let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
    static let weekdays = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

    /// Python's `datetime.now().strftime(format)` in the C locale, for the directives chat templates use.
    static func strftime(_ format: String, _ date: Date, _ tz: TimeZone, _ r: JinjaRenderer) throws -> String {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = tz
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
        let year = c.year ?? 1970, month = c.month ?? 1, day = c.day ?? 1
        let hour = c.hour ?? 0, minute = c.minute ?? 0, second = c.second ?? 0, weekday = (c.weekday ?? 1) - 1
        let yday = cal.ordinality(of: .day, in: .year, for: date) ?? 1
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        var out = ""
        var it = format.makeIterator()
        while let ch = it.next() {
            guard ch == "%" else { out.append(ch); continue }
            guard let d = it.next() else { out.append("%"); break }
            switch d {
            case "d": out += two(day)
            case "m": out += two(month)
            case "Y": out += String(year)
            case "y": out += two(year % 100)
            case "b", "h": out += String(months[month - 1].prefix(3))
            case "B": out += months[month - 1]
            case "a": out += String(weekdays[weekday].prefix(3))
            case "A": out += weekdays[weekday]
            case "H": out += two(hour)
            case "I": out += two(hour % 12 == 0 ? 12 : hour % 12)
            case "p": out += hour < 12 ? "AM" : "PM"
            case "M": out += two(minute)
            case "S": out += two(second)
            case "j": out += String(format: "%03d", yday)
            case "w": out += String(weekday)
            case "e": out += day < 10 ? " \(day)" : "\(day)"
            case "%": out += "%"
            default: throw r.fail("strftime_now: the directive %\(d) is not supported")
            }
        }
        return out
    }
}

// MARK: - Methods of strings, dicts and lists

enum JinjaMethods {
    static func pyStrip(_ s: String, _ chars: JinjaValue?, left: Bool, right: Bool) -> String {
        let set: ((Unicode.Scalar) -> Bool)
        if case .string(let c)? = chars { let cs = Set(c.unicodeScalars); set = { cs.contains($0) } }
        else { set = PromptRenderer.isPythonWhitespace }
        var u = Array(s.unicodeScalars)[...]
        if left { while let f = u.first, set(f) { u = u.dropFirst() } }
        if right { while let l = u.last, set(l) { u = u.dropLast() } }
        return String(String.UnicodeScalarView(u))
    }

    static func pySplit(_ s: String, _ sep: JinjaValue?, _ maxsplit: Int, r: JinjaRenderer) throws -> [JinjaValue] {
        if case .string(let sp)? = sep {
            guard !sp.isEmpty else { throw r.fail("split(): empty separator") }
            var parts: [String] = []
            var rest = Substring(s)
            while maxsplit < 0 || parts.count < maxsplit, let range = rest.range(of: sp, options: .literal) {
                parts.append(String(rest[..<range.lowerBound]))
                rest = rest[range.upperBound...]
            }
            parts.append(String(rest))
            return parts.map { .string($0) }
        }
        // Whitespace split: runs of whitespace, no empty strings.
        var parts: [String] = []
        var cur = String.UnicodeScalarView()
        var u = Array(s.unicodeScalars)[...]
        while let f = u.first, PromptRenderer.isPythonWhitespace(f) { u = u.dropFirst() }
        while let f = u.first {
            if PromptRenderer.isPythonWhitespace(f) {
                parts.append(String(cur)); cur = String.UnicodeScalarView()
                while let g = u.first, PromptRenderer.isPythonWhitespace(g) { u = u.dropFirst() }
                if maxsplit >= 0, parts.count >= maxsplit, !u.isEmpty { parts.append(String(String.UnicodeScalarView(u))); return parts.map { .string($0) } }
                continue
            }
            cur.append(f); u = u.dropFirst()
        }
        if !cur.isEmpty { parts.append(String(cur)) }
        return parts.map { .string($0) }
    }

    /// nil when `name` is not a method of the value's type.
    static func call(_ v: JinjaValue, _ name: String, _ a: [JinjaValue], _ kw: [(String, JinjaValue)], _ r: JinjaRenderer) throws -> JinjaValue? {
        func arg(_ i: Int, _ key: String) -> JinjaValue? { i < a.count ? a[i] : kw.first { $0.0 == key }?.1 }
        func str(_ i: Int, _ key: String) throws -> String {
            guard case .string(let s)? = arg(i, key) else { throw r.fail("\(name)() needs a string argument") }
            return s
        }
        switch v {
        case .string(let s):
            switch name {
            case "strip": return .string(pyStrip(s, arg(0, "chars"), left: true, right: true))
            case "lstrip": return .string(pyStrip(s, arg(0, "chars"), left: true, right: false))
            case "rstrip": return .string(pyStrip(s, arg(0, "chars"), left: false, right: true))
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title": return try JinjaFilters.apply("title", v, [], [], r)
            case "capitalize": return try JinjaFilters.apply("capitalize", v, [], [], r)
            case "startswith", "endswith":
                var prefixes: [String] = []
                switch arg(0, "prefix") {
                case .string(let p)?: prefixes = [p]
                case .list(let l)?: prefixes = l.compactMap { if case .string(let p) = $0 { return p } else { return nil } }
                default: throw r.fail("\(name)() needs a string argument")
                }
                let us = Array(s.unicodeScalars)
                return .bool(prefixes.contains { p in
                    let pu = Array(p.unicodeScalars)
                    return name == "startswith" ? us.starts(with: pu) : us.reversed().starts(with: pu.reversed())
                })
            case "split":
                var sep = arg(0, "sep")
                if case .none? = sep { sep = nil }
                let maxsplit = arg(1, "maxsplit").flatMap { r.intIndex($0) } ?? -1
                return .list(try pySplit(s, sep, maxsplit, r: r))
            case "replace":
                let old = try str(0, "old"), new = try str(1, "new")
                return .string(try JinjaFilters.replace(s, old, new, arg(2, "count").flatMap { r.intIndex($0) } ?? -1, r))
            case "count":
                let sub = try str(0, "sub")
                return .int(sub.isEmpty ? s.unicodeScalars.count + 1 : s.components(separatedBy: sub).count - 1)
            case "find":
                let sub = try str(0, "sub")
                guard let range = s.range(of: sub, options: .literal) else { return .int(-1) }
                return .int(s.unicodeScalars.distance(from: s.unicodeScalars.startIndex, to: range.lowerBound))
            case "join":
                guard let items = arg(0, "iterable") else { throw r.fail("join() needs an iterable") }
                return .string(try r.sized(try r.iterate(items).map { try r.string($0) }.joined(separator: s)))
            case "isdigit": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal })
            case "isspace": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(PromptRenderer.isPythonWhitespace))
            default: return nil
            }
        case .dict(let d):
            switch name {
            case "items": return .list(d.pairs.map { .list([.string($0.0), $0.1]) })
            case "keys": return .list(d.keys.map { .string($0) })
            case "values": return .list(d.pairs.map { $0.1 })
            case "get":
                guard case .string(let k)? = arg(0, "key") else { return arg(1, "default") ?? JinjaValue.none }
                return d[k] ?? arg(1, "default") ?? JinjaValue.none
            default: return nil
            }
        case .list(let l):
            switch name {
            case "count": return .int(l.filter { $0 == (arg(0, "value") ?? JinjaValue.none) }.count)
            case "index":
                guard let i = l.firstIndex(where: { $0 == (arg(0, "value") ?? JinjaValue.none) }) else { throw r.fail("index(): the value is not in the list") }
                return .int(i)
            case "append", "pop", "extend", "insert", "remove", "clear", "sort", "reverse":
                throw r.fail("the list method \(name)() changes the list; templates run in an immutable sandbox")
            default: return nil
            }
        default:
            return nil
        }
    }
}

// MARK: - Filters and tests

enum JinjaFilters {
    static func replace(_ s: String, _ old: String, _ new: String, _ count: Int, _ r: JinjaRenderer) throws -> String {
        if old.isEmpty {
            // Python inserts `new` around every character.
            let u = s.unicodeScalars.map { String($0) }
            let limit = count < 0 ? u.count + 1 : min(count, u.count + 1)
            var out = ""
            for (k, c) in u.enumerated() { if k < limit { out += new }; out += c }
            if limit > u.count { out += new }
            guard out.utf8.count <= JinjaRenderer.maxOutput else { throw r.fail("replace() result too long") }
            return out
        }
        var out = ""
        var rest = Substring(s)
        var n = 0
        while count < 0 || n < count, let range = rest.range(of: old, options: .literal) {
            out += rest[..<range.lowerBound]; out += new
            rest = rest[range.upperBound...]
            n += 1
            guard out.utf8.count <= JinjaRenderer.maxOutput else { throw r.fail("replace() result too long") }
        }
        return out + rest
    }

    static func apply(_ name: String, _ v: JinjaValue, _ a: [JinjaValue], _ kw: [(String, JinjaValue)], _ r: JinjaRenderer) throws -> JinjaValue {
        func arg(_ i: Int, _ key: String) -> JinjaValue? { i < a.count ? a[i] : kw.first { $0.0 == key }?.1 }
        func needString() throws -> String {
            switch v {
            case .string(let s): return s
            case .undefined: return ""
            default: return try r.string(v)
            }
        }
        switch name {
        case "trim":
            return .string(JinjaMethods.pyStrip(try needString(), arg(0, "chars"), left: true, right: true))
        case "upper": return .string(try needString().uppercased())
        case "lower": return .string(try needString().lowercased())
        case "capitalize":
            let s = try needString()
            guard let f = s.unicodeScalars.first else { return .string("") }
            return .string(String(f).uppercased() + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased())
        case "title":
            var out = "", prevAlnum = false
            for u in try needString().unicodeScalars {
                let alnum = u.properties.isAlphabetic || u.properties.numericType != nil
                out += prevAlnum ? String(u).lowercased() : String(u).uppercased()
                prevAlnum = alnum
            }
            return .string(out)
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.keys.count)
            case .undefined: return .int(0)
            default: throw r.fail("object of type '\(v.typeName)' has no len()")
            }
        case "string": return .string(try r.string(v))
        case "safe": return v
        case "default", "d":
            let boolean = arg(1, "boolean")?.truthy ?? false
            if case .undefined = v { return arg(0, "default_value") ?? .string("") }
            if boolean, !v.truthy { return arg(0, "default_value") ?? .string("") }
            return v
        case "first", "last":
            let items = try r.iterate(v)
            return (name == "first" ? items.first : items.last) ?? .undefined("\(name) of an empty sequence")
        case "list": return .list(try r.iterate(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try r.iterate(v).reversed())
        case "items":
            switch v {
            case .dict(let d): return .list(d.pairs.map { .list([.string($0.0), $0.1]) })
            case .undefined: return .list([])
            default: throw r.fail("the items filter needs a mapping, not '\(v.typeName)'")
            }
        case "join":
            var sep = ""
            if let s = arg(0, "d") { sep = try r.string(s) }
            var items = try r.iterate(v)
            if case .string(let attr)? = kw.first(where: { $0.0 == "attribute" })?.1 {
                items = try items.map { try r.attribute($0, attr, described: attr) }
            }
            return .string(try r.sized(try items.map { try r.string($0) }.joined(separator: sep)))
        case "replace":
            guard case .string(let old)? = arg(0, "old"), case .string(let new)? = arg(1, "new") else {
                throw r.fail("replace needs two strings")
            }
            return .string(try replace(try needString(), old, new, arg(2, "count").flatMap { r.intIndex($0) } ?? -1, r))
        case "tojson":
            var indent: Int? = nil
            if let i = arg(0, "indent") { if case .none = i {} else { indent = r.intIndex(i) } }
            if let i = indent, i < 0 || i > 64 { throw r.fail("tojson: indent \(i) is out of range") }
            var separators: (String, String)? = nil
            if case .list(let seps)? = kw.first(where: { $0.0 == "separators" })?.1, seps.count == 2,
               case .string(let x) = seps[0], case .string(let y) = seps[1] { separators = (x, y) }
            let sortKeys = kw.first(where: { $0.0 == "sort_keys" })?.1.truthy ?? false
            if let ensure = kw.first(where: { $0.0 == "ensure_ascii" })?.1, ensure.truthy {
                throw r.fail("tojson(ensure_ascii=true) is not supported")
            }
            return .string(try JinjaFormat.json(v, indent: indent, separators: separators, sortKeys: sortKeys, r: r))
        case "int":
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .float(let f): return f.isFinite && abs(f) < 9e18 ? .int(Int(f)) : (arg(0, "default") ?? .int(0))
            case .string(let s): return Int(JinjaMethods.pyStrip(s, nil, left: true, right: true)).map { .int($0) } ?? (arg(0, "default") ?? .int(0))
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            if let n = v.number { return .float(n) }
            if case .string(let s) = v, let d = Double(JinjaMethods.pyStrip(s, nil, left: true, right: true)) { return .float(d) }
            return arg(0, "default") ?? .float(0)
        case "abs":
            switch v {
            case .int(let i): guard i != .min else { throw r.fail("integer overflow") }; return .int(abs(i))
            case .float(let f): return .float(abs(f))
            default: throw r.fail("bad operand type for abs(): '\(v.typeName)'")
            }
        case "map":
            let items = try r.iterate(v)
            if case .string(let attr)? = kw.first(where: { $0.0 == "attribute" })?.1 {
                let dflt = kw.first(where: { $0.0 == "default" })?.1
                return .list(try items.map { x in
                    let y = try r.attribute(x, attr, described: attr)
                    if case .undefined = y, let dflt { return dflt }
                    return y
                })
            }
            guard case .string(let f)? = a.first else { throw r.fail("map needs a filter name or attribute=") }
            return .list(try items.map { try apply(f, $0, Array(a.dropFirst()), [], r) })
        case "select", "reject":
            let items = try r.iterate(v)
            return .list(try items.filter { x in
                let ok: Bool
                if case .string(let t)? = a.first { ok = try test(t, x, Array(a.dropFirst()), r) } else { ok = x.truthy }
                return ok == (name == "select")
            })
        case "selectattr", "rejectattr":
            guard case .string(let attr)? = a.first else { throw r.fail("\(name) needs an attribute name") }
            let items = try r.iterate(v)
            return .list(try items.filter { x in
                let y = try r.attribute(x, attr, described: attr)
                let ok: Bool
                if a.count > 1, case .string(let t) = a[1] { ok = try test(t, y, Array(a.dropFirst(2)), r) } else { ok = y.truthy }
                return ok == (name == "selectattr")
            })
        case "unique":
            var seen: [JinjaValue] = []
            for x in try r.iterate(v) where !seen.contains(where: { $0 == x }) { seen.append(x) }
            return .list(seen)
        default:
            throw r.fail("the filter '\(name)' is not supported")
        }
    }

    static func test(_ name: String, _ v: JinjaValue, _ a: [JinjaValue], _ r: JinjaRenderer) throws -> Bool {
        switch name {
        case "defined": if case .undefined = v { return false }; return true
        case "undefined": if case .undefined = v { return true }; return false
        case "none": if case .none = v { return true }; return false
        case "string": if case .string = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": return v == .bool(true) && v.typeName == "bool"
        case "false": return v == .bool(false) && v.typeName == "bool"
        case "integer": if case .int = v { return true }; return false
        case "float": if case .float = v { return true }; return false
        case "number": switch v { case .int, .float, .bool: return true; default: return false }
        case "mapping": switch v { case .dict: return true; default: return false }
        case "iterable": switch v { case .list, .dict, .string: return true; default: return false }
        case "sequence": switch v { case .list, .dict, .string: return true; default: return false }
        case "callable": switch v { case .macro, .builtin: return true; default: return false }
        case "odd", "even":
            guard let i = r.intIndex(v) else { throw r.fail("the test '\(name)' needs an integer") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = r.intIndex(v), let d = a.first.flatMap(r.intIndex), d != 0 else { throw r.fail("divisibleby needs integers") }
            return i % d == 0
        case "lower": if case .string(let s) = v { return s == s.lowercased() }; return false
        case "upper": if case .string(let s) = v { return s == s.uppercased() }; return false
        case "equalto", "eq", "==", "sameas", "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in":
            guard let other = a.first else { throw r.fail("the test '\(name)' needs an argument") }
            let op: String
            switch name {
            case "equalto", "eq", "==", "sameas": op = "=="
            case "ne", "!=": op = "!="
            case "lt": op = "<"
            case "le": op = "<="
            case "gt": op = ">"
            case "ge": op = ">="
            default: op = name
            }
            return try r.binary(op, v, other).truthy
        default:
            throw r.fail("the test '\(name)' is not supported")
        }
    }
}
