import Foundation
import Quant
import Formats
import Testing

/// Tests/fixtures/gguf: reference files written by gguf-py (make_gguf_fixtures.py) and llama.cpp's converter.
enum GGUFFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures/gguf")
    static func path(_ name: String) -> String { root.appendingPathComponent(name).path }
}

/// The canonical value strings of make_gguf_fixtures.py: `UINT8:200`, `FLOAT32:0x40490fd0`,
/// `STRING:"a\"b"`, `ARRAY[STRING]:[STRING:"a",STRING:"b"]`.
func canon(_ v: GGUFValue) -> String {
    func esc(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case _ where u.value < 0x20 || u.value == 0x7F: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
    switch v {
    case .string(let s): return "STRING:" + esc(s)
    case .bool(let b): return "BOOL:\(b)"
    case .float32(let f): return "FLOAT32:0x" + String(format: "%08x", f.bitPattern)
    case .float64(let d): return "FLOAT64:0x" + String(format: "%016lx", d.bitPattern)
    case .array(let t, let values): return "ARRAY[\(t.name)]:[" + values.map(canon).joined(separator: ",") + "]"
    default: return "\(v.type.name):\(v.int.map(String.init) ?? "\(v)")"
    }
}

func hex(_ bytes: UnsafeRawBufferPointer) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
func unhex(_ s: String) -> [UInt8] {
    let u = Array(s.utf8)
    func nib(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : (c | 0x20) - 87 }
    return stride(from: 0, to: u.count, by: 2).map { nib(u[$0]) << 4 | nib(u[$0 + 1]) }
}
func floatsFromHex(_ s: String) -> [Float] {
    unhex(s).withUnsafeBytes { b in (0..<(b.count / 4)).map { b.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) } }
}

func ggufTemp(_ name: String) -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-\(UUID().uuidString.prefix(8))")
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent(name).path
}

@Suite struct GGUFTests {
    // MARK: Round trip

    /// Metadata of every value type, including empty and nested arrays of strings.
    static let metadata: [(String, GGUFValue)] = [
        ("general.architecture", .string("llama")),
        ("t.u8", .uint8(255)), ("t.i8", .int8(-128)), ("t.u16", .uint16(65535)), ("t.i16", .int16(-32768)),
        ("t.u32", .uint32(4_294_967_295)), ("t.i32", .int32(-2_147_483_648)), ("t.f32", .float32(-1.5e-3)),
        ("t.bool", .bool(true)), ("t.string", .string("ünïcödé 🦙 \"q\" \\ \n\t end")), ("t.empty", .string("")),
        ("t.u64", .uint64(.max)), ("t.i64", .int64(.min)), ("t.f64", .float64(-.pi)),
        ("t.f32s", .array(.float32, [.float32(0.5), .float32(-.infinity), .float32(Float(bitPattern: 0x0001_1170))])),
        ("t.i32s", .array(.int32, [.int32(3), .int32(-1), .int32(6)])),
        ("t.strings", .array(.string, ["<unk>", "<s>", "▁a", "", "<0xFF>"].map { .string($0) })),
        ("t.nested", .array(.array, [
            .array(.string, [.string("ab"), .string("c")]), .array(.string, []),
            .array(.string, [.string("déf")]),
        ])),
        ("t.deep", .array(.array, [.array(.array, [.array(.uint16, [.uint16(7)])])])),
        ("t.empty_array", .array(.int64, [])),
        ("t.bools", .array(.bool, [.bool(false), .bool(true)])),
    ]

    struct Layout: Sendable, CustomTestStringConvertible {
        let alignment: Int
        let keyInMetadata: Bool
        var testDescription: String { "alignment \(alignment)\(keyInMetadata ? " (general.alignment given)" : "")" }
    }

    @Test("write then read: every value type, F32/F16/Q8_0 tensors written in pieces",
          arguments: [Layout(alignment: 32, keyInMetadata: false), Layout(alignment: 64, keyInMetadata: true),
                      Layout(alignment: 64, keyInMetadata: false), Layout(alignment: 32, keyInMetadata: true)])
    func roundTrip(layout: Layout) throws {
        let path = ggufTemp("r.gguf")
        var meta = Self.metadata
        if layout.keyInMetadata { meta.insert((GGUFFile.alignmentKey, .uint32(UInt32(layout.alignment))), at: 1) }
        let specs: [GGUFWriter.Spec] = [
            .init("a.f32", .f32, [3, 5]), .init("b.f16", .f16, [7]), .init("c.q8_0", .q8_0, [2, 2, 64]),
            .init("d.f32", .f32, [1]),
        ]
        let a = (0..<15).map { Float($0) * 0.25 - 1 }
        let b: [Float] = [0.1, -2, 65504, 1e-8, 3, 0.5, -0]
        var rng = SplitMix(seed: 7)
        let c = (0..<256).map { _ in Float(Int(rng.next() % 2001) - 1000) / 300 }
        let w = try GGUFWriter(path: path, metadata: meta, tensors: specs,
                               alignment: layout.keyInMetadata ? 32 : layout.alignment)
        #expect(w.alignment == layout.alignment)
        try w.write(Array(a[0..<4]))
        try w.write(Array(a[4...]))
        try w.writeFloats(b)
        try w.writeFloats(Array(c[0..<64]))
        try w.writeFloats(Array(c[64...]))
        #expect(!FileManager.default.fileExists(atPath: path), "visible before commit")
        try w.writeFloats([42])
        try w.commit()

        let f = try GGUFFile(path: path)
        let expectedMeta = meta + (layout.keyInMetadata || layout.alignment == 32 ? []
            : [(GGUFFile.alignmentKey, GGUFValue.uint32(UInt32(layout.alignment)))])
        #expect(f.version == 3 && f.alignment == layout.alignment)
        #expect(f.metadataKeys == expectedMeta.map(\.0))
        for (k, v) in expectedMeta { #expect(f.metadata[k].map(canon) == canon(v), "key \(k)") }
        #expect(f.metadata["t.u64"] == .uint64(.max) && f.metadata["t.nested"] == meta.first { $0.0 == "t.nested" }!.1)
        #expect(f.tensorNames == ["a.f32", "b.f16", "c.q8_0", "d.f32"])
        #expect(f.dataOffset % layout.alignment == 0)
        let c3 = try f.info("c.q8_0")
        #expect(c3.shape == [2, 2, 64] && c3.dims == [64, 2, 2] && c3.type == .q8_0 && c3.byteCount == 8 * 34
                && c3.elementCount == 256 && c3.rowLength == 64 && c3.rowCount == 4)
        for name in f.tensorNames { #expect(try f.info(name).fileOffset % layout.alignment == 0) }
        #expect(try f.floats("a.f32") == a)
        #expect(try f.floats("b.f16") == b.map { f16ToFloat(floatToF16($0)) })
        var q = [UInt8](repeating: 0, count: 8 * 34)
        QuantType.q8_0.fromFloatReference(c, &q, 256)
        #expect(Array(f.bytes(c3)) == q)
        #expect(try f.floats("d.f32") == [42])
        // Writer and reader agree on where everything is: the file ends with the last tensor's padding.
        let last = try f.info("d.f32")
        #expect(f.file.size == (last.fileOffset + 4 + layout.alignment - 1) / layout.alignment * layout.alignment)

        // LLAMAPROBE_GGUF_EXPORT=DIR keeps the file and what it should hold, for
        // `make_gguf_fixtures.py --check-swift DIR` (gguf-py's reader on our writer's output), plus a variant
        // without nested arrays ("flat-"), which ggml's own C reader (gguf_init_from_file) refuses.
        if let dir = ProcessInfo.processInfo.environment["LLAMAPROBE_GGUF_EXPORT"] {
            var raw: [[UInt8]] = [a.withUnsafeBytes { Array($0) }]
            var h = [UInt8](repeating: 0, count: 14)
            QuantType.f16.fromFloatReference(b, &h, 7)
            raw += [h, q, [Float(42)].withUnsafeBytes { Array($0) }]
            let name = "roundtrip-\(layout.alignment)\(layout.keyInMetadata ? "-key" : "")"
            for flat in [false, true] {
                let keep: ((String, GGUFValue)) -> Bool = { !flat || $0.1.arrayElementType != .array }
                let out = dir + "/\(flat ? "flat-" : "")\(name)"
                let w = try GGUFWriter(path: out + ".gguf", metadata: meta.filter(keep), tensors: specs,
                                       alignment: layout.keyInMetadata ? 32 : layout.alignment)
                for r in raw { try w.write(r) }
                try w.commit()
                var offset = 0
                var tensors: [[String: Any]] = []
                for (s, r) in zip(specs, raw) {
                    tensors.append(["name": s.name, "type": s.type.name, "dims": s.dims, "relative_offset": offset,
                                    "raw_hex": r.withUnsafeBytes { hex($0) }])
                    offset += (r.count + layout.alignment - 1) / layout.alignment * layout.alignment
                }
                let doc: [String: Any] = ["alignment": layout.alignment, "tensors": tensors,
                                          "metadata": expectedMeta.filter(keep).map { [$0.0, canon($0.1)] }]
                try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: out + ".expected.json"))
            }
        }
    }

    // MARK: gguf-py cross-check

    struct Reference: Decodable {
        struct File: Decodable {
            let file: String
            let version: Int
            let alignment: Int
            let data_offset: Int
            let metadata: [[String]]
            let tensors: [Tensor]
        }
        struct Tensor: Decodable {
            let name: String
            let type: String
            let type_id: UInt32
            let dims: [Int]
            let relative_offset: Int
            let file_offset: Int
            let byte_count: Int
            let raw_hex: String
            let values_f32_hex: String?
            let source_f32_hex: String?
        }
        let gguf_py_version: String
        let files: [File]
    }

    static let reference: Reference = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: GGUFFixtures.path("reference.json")))
        return try! JSONDecoder().decode(Reference.self, from: data)
    }()

    @Test("files written by gguf-py read exactly as gguf-py's GGUFReader reads them")
    func pythonReference() throws {
        #expect(Self.reference.files.count == 2)
        for r in Self.reference.files {
            let f = try GGUFFile(path: GGUFFixtures.path(r.file))
            #expect(f.version == r.version && f.alignment == r.alignment && f.dataOffset == r.data_offset, "\(r.file)")
            #expect(f.metadataKeys.map { [$0, canon(f.metadata[$0]!)] } == r.metadata, "\(r.file)")
            #expect(f.tensorNames == r.tensors.map(\.name))
            for t in r.tensors {
                let i = try f.info(t.name)
                #expect(i.type.name == t.type && i.type.rawValue == t.type_id && i.dims == t.dims, "\(t.name)")
                #expect(i.relativeOffset == t.relative_offset && i.fileOffset == t.file_offset && i.byteCount == t.byte_count)
                #expect(hex(f.bytes(i)) == t.raw_hex, "\(r.file) \(t.name) raw bytes")
                if let v = t.values_f32_hex {
                    #expect(try f.floats(t.name).map(\.bitPattern) == floatsFromHex(v).map(\.bitPattern), "\(t.name) values")
                }
            }
        }
        #expect(try GGUFFile(path: GGUFFixtures.path("reference.gguf")).string("general.architecture") == "refcheck")
    }

    @Test("our Q8_0 and F16 conversions give gguf.quants.quantize's bytes exactly")
    func quantizationMatchesGGUFPy() throws {
        for r in Self.reference.files {
            for t in r.tensors {
                guard let src = t.source_f32_hex.map(floatsFromHex), let q = GGMLType.allCases.first(where: { $0.name == t.type })?.quantType else { continue }
                var fast = [UInt8](repeating: 0, count: t.byte_count), ref = fast
                q.fromFloat(src, &fast, src.count)
                q.fromFloatReference(src, &ref, src.count)
                #expect(fast == unhex(t.raw_hex), "\(t.name) fast")
                #expect(ref == unhex(t.raw_hex), "\(t.name) reference")
            }
        }
        #expect(Self.reference.files[0].tensors.contains { $0.type == "Q8_0" && $0.source_f32_hex != nil })
    }

    @Test("re-writing gguf-py's files with GGUFWriter reproduces them byte for byte")
    func rewriteIsByteIdentical() throws {
        for r in Self.reference.files {
            let original = GGUFFixtures.path(r.file)
            let f = try GGUFFile(path: original)
            let out = ggufTemp(r.file)
            let w = try GGUFWriter(path: out, metadata: f.metadataKeys.map { ($0, f.metadata[$0]!) },
                                   tensors: f.tensorNames.map { let i = f.tensors[$0]!; return .init(i.name, i.type, i.shape) })
            for name in f.tensorNames { try w.write(f.bytes(f.tensors[name]!)) }
            try w.commit()
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: original)), "\(r.file)")
        }
    }

    // MARK: API behaviour

    @Test("typed metadata accessors name the key when it is missing or of the wrong type")
    func typedAccessors() throws {
        let path = ggufTemp("m.gguf")
        let w = try GGUFWriter(path: path, metadata: Self.metadata, tensors: [])
        try w.commit()
        let f = try GGUFFile(path: path)
        #expect(try f.uint("t.u32") == 4_294_967_295 && f.int("t.i16") == -32768 && f.uint("t.u8") == 255)
        #expect(try f.float("t.f32") == -1.5e-3 && f.float("t.f64") == Float(-Double.pi))
        #expect(try f.string("general.architecture") == "llama" && f.bool("t.bool"))
        #expect(try f.stringArray("t.strings") == ["<unk>", "<s>", "▁a", "", "<0xFF>"])
        #expect(try f.intArray("t.i32s") == [3, -1, 6] && f.floatArray("t.f32s")[0] == 0.5)
        #expect(try f.uintIfPresent("absent") == nil && f.stringIfPresent("absent") == nil)
        #expect(f.metadata["t.u64"]?.int == nil, "UInt64.max does not fit in Int")
        let failures: [(String, () throws -> Any)] = [
            ("missing", { try f.uint("llama.block_count") }),
            ("expected a non-negative integer", { try f.uint("t.i8") }),
            ("expected a float", { try f.float("t.string") }),
            ("expected a string", { try f.string("t.u8") }),
            ("expected an array of strings", { try f.stringArray("t.i32s") }),
            ("expected an array of floats", { try f.floatArrayIfPresent("t.strings") as Any }),
            ("expected an array of integers", { try f.intArray("t.nested") }),
            ("expected a bool", { try f.bool("t.u8") }),
        ]
        for (text, call) in failures {
            do { _ = try call(); Issue.record("no error for \(text)") } catch let e as GGUFError {
                #expect(e.file == path && e.key != nil && e.reason.contains(text), "\(e)")
                #expect(e.localizedDescription.contains("key '\(e.key!)'"))
            }
        }
    }

    @Test("a known but unsupported type (Q4_K) opens and lists; its data is refused naming tensor and type")
    func unsupportedTypeIsListedButRefused() throws {
        let path = ggufTemp("k.gguf")
        let w = try GGUFWriter(path: path, metadata: [], tensors: [.init("blk.0.ffn_down.weight", .q4_K, [2, 256])])
        #expect(GGMLType.q4_K.bytesPerBlock == 144 && GGMLType.q6_K.bytesPerBlock == 210 && GGMLType.q2_K.bytesPerBlock == 84)
        try w.write([UInt8](repeating: 0, count: 2 * 144))
        try w.commit()
        let f = try GGUFFile(path: path)
        let i = try f.info("blk.0.ffn_down.weight")
        #expect(i.type == .q4_K && i.byteCount == 288 && i.shape == [2, 256])
        #expect { _ = try f.floats("blk.0.ffn_down.weight") } throws: { e in
            guard let e = e as? GGUFError else { return false }
            return e.tensor == "blk.0.ffn_down.weight" && e.reason.contains("Q4_K") && e.reason.contains("F32, F16, Q8_0, BF16")
        }
        #expect { _ = try f.info("nope") } throws: { ($0 as? GGUFError)?.tensor == "nope" }
    }

    @Test("ggml type ids and sizes are ggml's")
    func typeTable() {
        let ids: [(GGMLType, UInt32, String)] = [
            (.f32, 0, "F32"), (.f16, 1, "F16"), (.q4_0, 2, "Q4_0"), (.q4_1, 3, "Q4_1"), (.q5_0, 6, "Q5_0"),
            (.q5_1, 7, "Q5_1"), (.q8_0, 8, "Q8_0"), (.q8_1, 9, "Q8_1"), (.q2_K, 10, "Q2_K"), (.q3_K, 11, "Q3_K"),
            (.q4_K, 12, "Q4_K"), (.q5_K, 13, "Q5_K"), (.q6_K, 14, "Q6_K"), (.q8_K, 15, "Q8_K"), (.i8, 24, "I8"),
            (.i16, 25, "I16"), (.i32, 26, "I32"), (.i64, 27, "I64"), (.f64, 28, "F64"), (.bf16, 30, "BF16"),
        ]
        for (t, id, name) in ids { #expect(t.rawValue == id && t.name == name) }
        for t in GGMLType.allCases {
            if let q = t.quantType {
                #expect(q.blockSize == t.blockSize && q.bytesPerBlock == t.bytesPerBlock && GGMLType(q.id) == t)
            }
        }
        #expect(GGMLType.allCases.filter { $0.quantType != nil } == [.f32, .f16, .q8_0, .bf16])
    }

    @Test("the writer refuses bad input, names the tensor or key, and leaves no file when not committed")
    func writerErrors() throws {
        let path = ggufTemp("w.gguf")
        func expectError(_ text: String, tensor: String? = nil, key: String? = nil, _ body: () throws -> Void) {
            do { try body(); Issue.record("no error: \(text)") } catch let e as GGUFError {
                #expect(e.file == path && e.tensor == tensor && e.key == key && e.reason.contains(text), "\(e)")
            } catch { Issue.record("\(error)") }
        }
        expectError("duplicate tensor name", tensor: "x") {
            _ = try GGUFWriter(path: path, metadata: [], tensors: [.init("x", .f32, [1]), .init("x", .f32, [2])])
        }
        expectError("duplicate metadata key", key: "k") {
            _ = try GGUFWriter(path: path, metadata: [("k", .bool(true)), ("k", .int8(1))], tensors: [])
        }
        expectError("element 1 of type INT32", key: "a") {
            _ = try GGUFWriter(path: path, metadata: [("a", .array(.string, [.string("x"), .int32(1)]))], tensors: [])
        }
        expectError("not a multiple of the Q8_0 block size 32", tensor: "q") {
            _ = try GGUFWriter(path: path, metadata: [], tensors: [.init("q", .q8_0, [2, 48])])
        }
        expectError("1 to 4 dimensions", tensor: "d") {
            _ = try GGUFWriter(path: path, metadata: [], tensors: [.init("d", .f32, [1, 1, 1, 1, 1])])
        }
        expectError("not a power of two") { _ = try GGUFWriter(path: path, metadata: [], tensors: [], alignment: 48) }
        expectError("must be a UINT32", key: "general.alignment") {
            _ = try GGUFWriter(path: path, metadata: [("general.alignment", .int32(32))], tensors: [])
        }
        expectError("disagrees", key: "general.alignment") {
            _ = try GGUFWriter(path: path, metadata: [("general.alignment", .uint32(64))], tensors: [], alignment: 128)
        }
        do {
            let w = try GGUFWriter(path: path, metadata: [], tensors: [.init("x", .f32, [4]), .init("y", .q4_K, [256])])
            try w.write([Float](arrayLiteral: 1, 2))
            expectError("not fully written: 8 of 16 bytes", tensor: "x") { try w.commit() }
            try w.write([Float](arrayLiteral: 3, 4))
            expectError("writeFloats cannot produce Q4_K", tensor: "y") { try w.writeFloats([Float](repeating: 0, count: 256)) }
            try w.write([UInt8](repeating: 0, count: 144))
            expectError("more tensor data written") { try w.write([UInt8(0)]) }
        }
        do {
            let w = try GGUFWriter(path: path, metadata: [], tensors: [.init("q", .q8_0, [64])])
            expectError("whole Q8_0 blocks", tensor: "q") { try w.writeFloats([Float](repeating: 1, count: 16)) }
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        let dir = (path as NSString).deletingLastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "temporary file left behind")
    }

    // MARK: Corrupt files

    /// Raw GGUF bytes, built field by field.
    struct Raw {
        var b: [UInt8] = []
        mutating func u8(_ v: UInt8) { b.append(v) }
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b += s.utf8 }

        static func kv(_ key: String, _ type: UInt32, _ payload: (inout Raw) -> Void) -> [UInt8] {
            var r = Raw(); r.str(key); r.u32(type); payload(&r); return r.b
        }
        static func info(_ name: String, _ dims: [UInt64], _ type: UInt32, _ offset: UInt64) -> [UInt8] {
            var r = Raw(); r.str(name); r.u32(UInt32(dims.count)); for d in dims { r.u64(d) }
            r.u32(type); r.u64(offset); return r.b
        }
        static func file(magic: String = "GGUF", version: UInt32 = 3, tensorCount: UInt64? = nil, kvCount: UInt64? = nil,
                         kvs: [[UInt8]] = [], infos: [[UInt8]] = [], data: Int = 0, alignment: Int = 32) -> [UInt8] {
            var r = Raw()
            r.b += magic.utf8
            r.u32(version)
            r.u64(tensorCount ?? UInt64(infos.count))
            r.u64(kvCount ?? UInt64(kvs.count))
            for k in kvs { r.b += k }
            for i in infos { r.b += i }
            r.b += [UInt8](repeating: 0, count: (r.b.count + alignment - 1) / alignment * alignment - r.b.count)
            r.b += [UInt8](repeating: 0x3C, count: data)
            return r.b
        }
    }

    func open(_ bytes: [UInt8]) -> (String, Error?) {
        let path = ggufTemp("c.gguf")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        do { _ = try GGUFFile(path: path); return (path, nil) } catch { return (path, error) }
    }

    @Test func corruptFiles() {
        let f32: UInt32 = 0, q8: UInt32 = 8
        let okInfo = Raw.info("t", [8, 2], f32, 0)
        let okKV = Raw.kv("general.architecture", 8) { $0.str("llama") }
        #expect(open(Raw.file(kvs: [okKV], infos: [okInfo], data: 64)).1 == nil)
        let absurd: UInt64 = 1 << 60
        func nested(_ depth: Int) -> [UInt8] {
            Raw.kv("deep", 9) { r in
                for _ in 0..<depth { r.u32(9); r.u64(1) }
                r.u32(4); r.u64(1); r.u32(7)
            }
        }
        var truncatedHeader = Raw.file(kvs: [okKV], infos: [okInfo], data: 64)
        truncatedHeader.removeLast(truncatedHeader.count - 10)
        var truncatedKV = Raw.file(kvs: [okKV])
        truncatedKV.removeLast(truncatedKV.count - 24 - 8 - 20 - 4 - 6)
        var truncatedInfo = Raw.file(kvs: [okKV], infos: [okInfo])
        truncatedInfo.removeLast(truncatedInfo.count - 24 - okKV.count - okInfo.count + 9)
        let cases: [(String, [UInt8], String, String?, String?)] = [
            ("bad magic", Raw.file(magic: "GGML", kvs: [okKV]), "not a GGUF file", nil, nil),
            ("version 1", Raw.file(version: 1, kvs: [okKV]), "version 1 is not supported", nil, nil),
            ("version 4", Raw.file(version: 4, kvs: [okKV]), "unsupported GGUF version 4", nil, nil),
            ("big-endian", Raw.file(version: UInt32(3).byteSwapped, kvs: [okKV]), "big-endian", nil, nil),
            ("truncated header", truncatedHeader, "truncated header", nil, nil),
            ("tiny", Array("GG".utf8), "truncated", nil, nil),
            ("absurd tensor count", Raw.file(tensorCount: absurd, kvs: [okKV]), "tensor count 1152921504606846976 is absurd", nil, nil),
            ("absurd kv count", Raw.file(kvCount: absurd), "metadata count", nil, nil),
            ("absurd key length", Raw.file(kvs: [{ var r = Raw(); r.u64(absurd); r.u32(4); r.u32(1); return r.b }()]),
             "string length 1152921504606846976", nil, nil),
            ("absurd string value", Raw.file(kvs: [Raw.kv("k", 8) { $0.u64(absurd) }]), "string length", nil, "k"),
            ("absurd array", Raw.file(kvs: [Raw.kv("arr", 9) { $0.u32(8); $0.u64(absurd) }]), "array length 1152921504606846976", nil, "arr"),
            ("absurd u8 array", Raw.file(kvs: [Raw.kv("arr", 9) { $0.u32(0); $0.u64(1000) }]), "array length 1000", nil, "arr"),
            ("too many metadata values", Raw.file(kvs: [Raw.kv("arr", 9) { $0.u32(0); $0.u64(1 << 24 + 1); $0.b += [UInt8](repeating: 0, count: 1 << 24 + 1) }]),
             "array length 16777217: the metadata would hold more than 16777216 values", nil, "arr"),
            ("unknown value type", Raw.file(kvs: [Raw.kv("k", 13) { $0.u32(0) }]), "unknown value type 13", nil, "k"),
            ("unknown element type", Raw.file(kvs: [Raw.kv("k", 9) { $0.u32(77); $0.u64(1) }]), "unknown array element type 77", nil, "k"),
            ("bad UTF-8 key", Raw.file(kvs: [{ var r = Raw(); r.u64(2); r.b += [0xC3, 0x28]; r.u32(7); r.u8(1); return r.b }()]),
             "not valid UTF-8", nil, nil),
            ("bad UTF-8 value", Raw.file(kvs: [Raw.kv("s", 8) { $0.u64(1); $0.u8(0xFF) }]), "not valid UTF-8", nil, "s"),
            ("empty key", Raw.file(kvs: [Raw.kv("", 7) { $0.u8(1) }]), "empty key", nil, nil),
            ("duplicate key", Raw.file(kvs: [okKV, okKV]), "duplicate metadata key", nil, "general.architecture"),
            ("bool 2", Raw.file(kvs: [Raw.kv("b", 7) { $0.u8(2) }]), "neither 0 nor 1", nil, "b"),
            ("nested too deep", Raw.file(kvs: [nested(9)]), "nested deeper than 8", nil, "deep"),
            ("truncated value", truncatedKV, "truncated", nil, "general.architecture"),
            ("alignment type", Raw.file(kvs: [Raw.kv("general.alignment", 5) { $0.u32(32) }]), "must be a UINT32", nil, "general.alignment"),
            ("alignment 48", Raw.file(kvs: [Raw.kv("general.alignment", 4) { $0.u32(48) }]), "not a power of two", nil, "general.alignment"),
            ("alignment 0", Raw.file(kvs: [Raw.kv("general.alignment", 4) { $0.u32(0) }]), "not a power of two", nil, "general.alignment"),
            ("unknown ggml type", Raw.file(infos: [Raw.info("t", [8], 99, 0)], data: 64), "unknown ggml type id 99", "t", nil),
            ("removed ggml type 4", Raw.file(infos: [Raw.info("t", [8], 4, 0)], data: 64), "unknown ggml type id 4", "t", nil),
            ("misaligned offset", Raw.file(infos: [Raw.info("a", [4], f32, 0), Raw.info("b", [4], f32, 16)], data: 64),
             "offset 16 is not a multiple of the alignment 32", "b", nil),
            ("data past the end", Raw.file(infos: [okInfo], data: 63), "runs past the end", "t", nil),
            ("offset past the end", Raw.file(infos: [Raw.info("t", [8], f32, 1 << 40)], data: 64), "runs past the end", "t", nil),
            ("huge offset", Raw.file(infos: [Raw.info("t", [8], f32, UInt64.max - 31)], data: 64), "runs past the end", "t", nil),
            ("Q8_0 row 48", Raw.file(infos: [Raw.info("q", [48, 2], q8, 0)], data: 4096), "row length 48 is not a multiple of the Q8_0 block size 32", "q", nil),
            ("n_dims 5", Raw.file(infos: [Raw.info("t", [1, 1, 1, 1, 1], f32, 0)], data: 64), "n_dims 5 is outside 1...4", "t", nil),
            ("n_dims 0", Raw.file(infos: [Raw.info("t", [], f32, 0)], data: 64), "n_dims 0", "t", nil),
            ("zero dim", Raw.file(infos: [Raw.info("t", [8, 0], f32, 0)], data: 64), "dimension 0 is invalid", "t", nil),
            ("dims overflow", Raw.file(infos: [Raw.info("t", [1 << 40, 1 << 40], f32, 0)], data: 64), "overflow", "t", nil),
            ("ne[0] = 2^62: byte size wraps", Raw.file(infos: [Raw.info("t", [1 << 62], f32, 0)], data: 64), "F32 dims [4611686018427387904]: the byte size overflows", "t", nil),
            ("Q8_0 ne[0] = 2^62 × 4", Raw.file(infos: [Raw.info("t", [1 << 62, 4], q8, 0)], data: 64), "Q8_0 dims [4611686018427387904, 4]: the element or byte count overflows", "t", nil),
            ("dim above Int.max", Raw.file(infos: [Raw.info("t", [UInt64.max], f32, 0)], data: 64), "invalid", "t", nil),
            ("duplicate names", Raw.file(infos: [okInfo, Raw.info("t", [8], f32, 64)], data: 128), "duplicate tensor name", "t", nil),
            ("overlap", Raw.file(infos: [Raw.info("a", [16], f32, 0), Raw.info("b", [8], f32, 32)], data: 128), "overlaps tensor 'a'", "b", nil),
            ("truncated tensor info", truncatedInfo, "truncated", "t", nil),
        ]
        for (label, bytes, text, tensor, key) in cases {
            let (path, error) = open(bytes)
            guard let e = error as? GGUFError else { Issue.record("\(label): expected a GGUFError, got \(String(describing: error))"); continue }
            #expect(e.file == path && e.tensor == tensor && e.key == key && e.reason.contains(text), "\(label): \(e.localizedDescription)")
            #expect(e.localizedDescription.hasPrefix(path))
        }
        #expect(throws: FileError.self) { _ = try GGUFFile(path: ggufTemp("absent.gguf")) }
    }

    @Test("every truncation and 1000 random byte flips of a valid file: an error or a consistent file, never a crash")
    func fuzz() throws {
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: GGUFFixtures.path("reference.gguf"))))
        let path = ggufTemp("z.gguf")
        /// Whether the file opened.
        @discardableResult func check(_ bytes: [UInt8]) -> Bool {
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            do {
                let f = try GGUFFile(path: path)
                for i in f.tensors.values { #expect(i.fileOffset + i.byteCount <= bytes.count && i.fileOffset >= f.dataOffset) }
                return true
            } catch is GGUFError {
            } catch is FileError {
                #expect(bytes.isEmpty)
            } catch { Issue.record("\(error)") }
            return false
        }
        var opened = 0
        for n in 0..<original.count where check(Array(original[0..<n])) { opened += 1 }
        // Only cuts inside the last tensor's trailing padding leave a valid file.
        let ref = Self.reference.files[0]
        let end = ref.tensors.map { $0.file_offset + $0.byte_count }.max()!
        #expect(original.count > end && opened == original.count - end)
        var rng = SplitMix(seed: 99)
        let header = ref.data_offset
        for _ in 0..<1000 {
            var b = original
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                b[Int(rng.next() % UInt64(header))] ^= UInt8(1 << (rng.next() % 8))
            }
            check(b)
        }
    }
}
