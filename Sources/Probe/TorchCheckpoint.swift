import Foundation
import Quant
import Formats

public struct CheckpointError: LocalizedError, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var errorDescription: String? { "\(file): \(reason)" }
}

/// A float32 tensor of a PyTorch state_dict.
public struct TorchTensor: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var values: [Float]
    public init(name: String, shape: [Int], values: [Float]) { self.name = name; self.shape = shape; self.values = values }
}

/// PyTorch checkpoints in the zip format of `torch.save` (PyTorch ≥ 1.6): an uncompressed zip whose
/// records are `{name}/data.pkl` (pickle protocol 2 of an OrderedDict state_dict whose tensors are
/// `torch._utils._rebuild_tensor_v2` of persistent-id storages), `{name}/data/{key}` (the raw little-endian
/// storage bytes, 64-byte aligned), `{name}/version` ("3"), `{name}/byteorder` ("little") and the small
/// records torch ≥ 2.4 adds. Loadable with `torch.load(path, weights_only=True)`.
public enum TorchCheckpoint {
    /// The `_metadata` torch attaches to a state_dict of the reference `Probe` module
    /// (classifier = Sequential(Linear, Sigmoid)); `load_state_dict` reads its versions.
    public static let probeModules = ["", "classifier", "classifier.0", "classifier.1"]

    /// The bytes of a checkpoint holding `tensors` (f32, contiguous) as an OrderedDict, in order.
    public static func encode(_ tensors: [TorchTensor], archiveName: String = "archive",
                              modules: [String] = probeModules) -> [UInt8] {
        let pickle = Pickle.stateDict(tensors, modules: modules)
        var records: [(String, [UInt8])] = [("data.pkl", pickle), (".format_version", Array("1".utf8)),
                                            (".storage_alignment", Array("64".utf8)), ("byteorder", Array("little".utf8))]
        for (i, t) in tensors.enumerated() {
            records.append(("data/\(i)", t.values.withUnsafeBytes { Array($0) }))
        }
        records.append(("version", Array("3\n".utf8)))
        // torch writes a random id; ours is derived from the content so identical checkpoints are identical files.
        var h = SHA256()
        for (_, bytes) in records { bytes.withUnsafeBytes { h.update($0) } }
        let id = h.finalize().prefix(20).map { String(format: "%02d", Int($0) % 100) }.joined()
        records.append((".data/serialization_id", Array(id.utf8)))
        return Zip.stored(records.map { ("\(archiveName)/\($0.0)", $0.1) }, alignment: 64)
    }

    /// Writes a checkpoint atomically; the archive name is the file's stem, as torch.save does.
    public static func write(_ tensors: [TorchTensor], to path: String) throws {
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        let bytes = encode(tensors, archiveName: stem.isEmpty ? "archive" : stem)
        let w = try AtomicFileWriter(path: path)
        try w.write(bytes)
        try w.commit()
    }

    /// Reads a state_dict of f32 tensors from a torch.save zip (ours, or torch's for plain state_dicts).
    public static func read(path: String) throws -> [TorchTensor] {
        let data: [UInt8]
        do { data = try Files.read(path, limit: 1 << 32) } catch let e as FileError {
            throw CheckpointError(file: path, reason: "cannot read: \(e.reason)")
        }
        return try decode(data, name: path)
    }

    public static func decode(_ bytes: [UInt8], name: String) throws -> [TorchTensor] {
        let entries = try Zip.entries(bytes, name: name)
        guard let pkl = entries.keys.first(where: { $0.hasSuffix("/data.pkl") }) else {
            throw CheckpointError(file: name, reason: "no */data.pkl record: not a torch.save zip")
        }
        let prefix = String(pkl.dropLast("data.pkl".count))
        guard let pickle = entries[pkl] else { throw CheckpointError(file: name, reason: "no */data.pkl record") }
        let refs = try Pickle.readStateDict(pickle, name: name)
        // Tensors may share a storage (tied weights), but together they may not read more than twice the
        // file's bytes: thousands of references to one large storage are a memory bomb, not a state_dict.
        var floats = 0
        return try refs.map { r in
            func fail(_ reason: String) -> CheckpointError { CheckpointError(file: name, reason: "tensor '\(r.name)': \(reason)") }
            guard let storage = entries[prefix + "data/" + r.key] else { throw fail("storage record data/\(r.key) is missing") }
            guard r.dtype == "FloatStorage" else { throw fail("is \(r.dtype), only FloatStorage is read") }
            guard r.shape.allSatisfy({ $0 >= 0 }) else { throw fail("shape \(r.shape) has a negative dimension") }
            guard r.offset >= 0 else { throw fail("storage offset \(r.offset) is negative") }
            // Element count and strides with checked arithmetic: a shape like [2^62, 4] is refused, not wrapped.
            var count = 1
            var expectedStride = [Int](repeating: 1, count: r.shape.count)
            for i in stride(from: r.shape.count - 1, through: 0, by: -1) {
                expectedStride[i] = count
                let (c, o) = count.multipliedReportingOverflow(by: r.shape[i])
                guard !o else { throw fail("shape \(r.shape) has more elements than memory can address") }
                count = c
            }
            let available = storage.count / 4
            guard r.offset <= available, count <= available - r.offset else {
                throw fail("shape \(r.shape) at storage offset \(r.offset) needs \(count) floats, the storage data/\(r.key) holds \(available)")
            }
            guard r.stride == expectedStride else { throw fail("strides \(r.stride) are not contiguous \(expectedStride)") }
            floats += count
            guard floats <= bytes.count / 2 else {
                throw fail("the tensors so far hold \(floats) floats, more than twice the \(bytes.count) bytes of the file (storages referenced again and again)")
            }
            let values = storage.withUnsafeBytes { p in
                (0..<count).map { Float(bitPattern: p.loadUnaligned(fromByteOffset: 4 * (r.offset + $0), as: UInt32.self).littleEndian) }
            }
            return TorchTensor(name: r.name, shape: r.shape, values: values)
        }
    }
}

/// A minimal zip writer (stored entries, no data descriptors, no zip64) and reader.
enum Zip {
    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// Each record's data starts at a multiple of `alignment` (padding in an extra field, as torch does).
    static func stored(_ records: [(String, [UInt8])], alignment: Int) -> [UInt8] {
        var out: [UInt8] = []
        func u16(_ v: Int, _ o: inout [UInt8]) { o += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
        func u32(_ v: UInt32, _ o: inout [UInt8]) { for s in [0, 8, 16, 24] { o.append(UInt8((v >> UInt32(s)) & 0xFF)) } }
        var central: [UInt8] = []
        for (name, data) in records {
            let nameBytes = Array(name.utf8)
            let crc = crc32(data)
            let offset = out.count
            var headerEnd = offset + 30 + nameBytes.count
            var pad = 0
            if headerEnd % alignment != 0 {
                pad = alignment - headerEnd % alignment
                if pad < 4 { pad += alignment }   // the extra field needs its 4-byte header
            }
            headerEnd += pad
            u32(0x0403_4B50, &out); u16(20, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0x21, &out)
            u32(crc, &out); u32(UInt32(data.count), &out); u32(UInt32(data.count), &out)
            u16(nameBytes.count, &out); u16(pad, &out)
            out += nameBytes
            if pad > 0 { out += [0x46, 0x42]; u16(pad - 4, &out); out += [UInt8](repeating: 0x5A, count: pad - 4) }
            out += data
            u32(0x0201_4B50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central)
            u16(0, &central); u16(0x21, &central)
            u32(crc, &central); u32(UInt32(data.count), &central); u32(UInt32(data.count), &central)
            u16(nameBytes.count, &central); u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central)
            u32(0, &central); u32(UInt32(offset), &central)
            central += nameBytes
        }
        let cdOffset = out.count
        out += central
        u32(0x0605_4B50, &out); u16(0, &out); u16(0, &out); u16(records.count, &out); u16(records.count, &out)
        u32(UInt32(central.count), &out); u32(UInt32(cdOffset), &out); u16(0, &out)
        return out
    }

    /// name → data of every stored entry, via the central directory; CRCs checked.
    /// Entries are slices of `b` (never copies: entries that overlap cost no memory).
    static func entries(_ b: [UInt8], name: String) throws -> [String: ArraySlice<UInt8>] {
        func fail(_ r: String) -> CheckpointError { CheckpointError(file: name, reason: r) }
        func u16(_ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u32(_ o: Int) -> Int { u16(o) | u16(o + 2) << 16 }
        guard b.count >= 22 else { throw fail("too short for a zip file") }
        guard b.count <= Int(UInt32.max) else { throw fail("larger than 4 GiB (zip64 is not read)") }
        var eocd = -1
        var o = b.count - 22
        while o >= max(0, b.count - 22 - 65535) {
            if u32(o) == 0x0605_4B50 { eocd = o; break }
            o -= 1
        }
        guard eocd >= 0 else { throw fail("no zip end-of-central-directory record: not a torch.save zip") }
        let n = u16(eocd + 10)
        var p = u32(eocd + 16)
        var result: [String: ArraySlice<UInt8>] = [:]
        for _ in 0..<n {
            guard p + 46 <= b.count, u32(p) == 0x0201_4B50 else { throw fail("corrupt zip central directory") }
            let method = u16(p + 10), crc = u32(p + 16), size = u32(p + 20), nameLen = u16(p + 28)
            let extraLen = u16(p + 30), commentLen = u16(p + 32), local = u32(p + 42)
            guard p + 46 + nameLen <= b.count else { throw fail("corrupt zip central directory") }
            let entry = String(decoding: b[(p + 46)..<(p + 46 + nameLen)], as: UTF8.self)
            guard method == 0 else { throw fail("record \(entry) is compressed (method \(method)); torch.save writes stored records") }
            guard local + 30 <= b.count, u32(local) == 0x0403_4B50 else { throw fail("record \(entry): bad local header") }
            let start = local + 30 + u16(local + 26) + u16(local + 28)
            guard start + size <= b.count else { throw fail("record \(entry) runs past the end of the file (truncated?)") }
            let data = b[start..<(start + size)]
            guard crc32(data) == UInt32(crc) else { throw fail("record \(entry): CRC mismatch (corrupt file)") }
            result[entry] = data
            p += 46 + nameLen + extraLen + commentLen
        }
        return result
    }
}

/// The pickle subset of torch state_dicts.
enum Pickle {
    static func stateDict(_ tensors: [TorchTensor], modules: [String]) -> [UInt8] {
        var o: [UInt8] = [0x80, 2]
        var memo = 0
        var memoOf: [String: Int] = [:]
        func put() { o += [0x71, UInt8(memo)]; memo += 1 }   // BINPUT (memo stays < 256 here)
        func get(_ i: Int) { o += [0x68, UInt8(i)] }          // BINGET
        func global(_ module: String, _ name: String) {
            let key = module + "\n" + name
            if let m = memoOf[key] { get(m); return }
            o.append(0x63); o += Array((key + "\n").utf8)      // GLOBAL
            memoOf[key] = memo; put()
        }
        func str(_ s: String, memoize: Bool = true) {
            if let m = memoOf["s:" + s] { get(m); return }
            let u = Array(s.utf8)
            o.append(0x58)                                       // BINUNICODE
            for sh in [0, 8, 16, 24] { o.append(UInt8((u.count >> sh) & 0xFF)) }
            o += u
            if memoize { memoOf["s:" + s] = memo; put() }
        }
        func int(_ v: Int) {
            if v < 256 { o += [0x4B, UInt8(v)] }                // BININT1
            else if v < 65536 { o += [0x4D, UInt8(v & 0xFF), UInt8(v >> 8)] }   // BININT2
            else { o.append(0x4A); for sh in [0, 8, 16, 24] { o.append(UInt8((v >> sh) & 0xFF)) } }   // BININT
        }
        func tuple(_ items: [Int]) {
            switch items.count {
            case 1: int(items[0]); o.append(0x85)
            case 2: int(items[0]); int(items[1]); o.append(0x86)
            case 3: items.forEach(int); o.append(0x87)
            default: o.append(0x28); items.forEach(int); o.append(0x74)
            }
            put()
        }
        global("collections", "OrderedDict")
        let orderedDict = 0
        o.append(0x29); o.append(0x52); put()                   // EMPTY_TUPLE REDUCE
        o.append(0x28)                                          // MARK
        for (i, t) in tensors.enumerated() {
            str(t.name)
            global("torch._utils", "_rebuild_tensor_v2")
            o.append(0x28)                                      // MARK (args)
            o.append(0x28)                                      // MARK (persistent id tuple)
            str("storage"); global("torch", "FloatStorage"); str(String(i)); str("cpu"); int(t.values.count)
            o.append(0x74); put()                               // TUPLE
            o.append(0x51)                                      // BINPERSID
            int(0)                                              // storage offset
            tuple(t.shape)
            var strides = [Int](repeating: 1, count: t.shape.count)
            for k in stride(from: t.shape.count - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * t.shape[k + 1] }
            tuple(strides)
            o.append(0x89)                                      // NEWFALSE (requires_grad)
            get(orderedDict); o.append(0x29); o.append(0x52); put()   // OrderedDict() backward hooks
            o.append(0x74); put()                               // TUPLE
            o.append(0x52); put()                               // REDUCE
        }
        o.append(0x75)                                          // SETITEMS
        // state: {'_metadata': OrderedDict({module: {'version': 1}})}
        o.append(0x7D); put()                                   // EMPTY_DICT
        str("_metadata")
        get(orderedDict); o.append(0x29); o.append(0x52); put()
        o.append(0x28)
        for m in modules {
            str(m); o.append(0x7D); put(); str("version"); int(1); o.append(0x73)   // {}, 'version', 1, SETITEM
        }
        o.append(0x75)                                          // SETITEMS
        o.append(0x73)                                          // SETITEM
        o.append(0x62)                                          // BUILD
        o.append(0x2E)                                          // STOP
        return o
    }

    struct TensorRef { var name: String; var key: String; var dtype: String; var offset: Int; var shape: [Int]; var stride: [Int] }

    indirect enum Value {
        case none, bool(Bool), int(Int), float(Double), string(String), tuple([Value]), list([Value])
        case dict([(Value, Value)]), global(String), mark, persistent(Value), tensor(TensorRef), object(String, [Value])
    }

    /// Interprets the opcodes torch uses for a state_dict and returns its tensors in order.
    /// Deepest nesting of containers accepted (a torch state_dict nests about 5 deep). Nesting is tracked
    /// as values are built: a 100,000-deep pickle is refused at depth 64, before a deeply nested value could
    /// overflow the stack when it is released.
    static let maxDepth = 64
    /// Container items copied while building values, at most (a state_dict needs a few per tensor).
    static let maxCopies = 1 << 24

    static func readStateDict<B: RandomAccessCollection>(_ bytes: B, name: String) throws -> [TensorRef] where B.Element == UInt8, B.Index == Int {
        let b = Array(bytes)
        func fail(_ r: String) -> CheckpointError { CheckpointError(file: name, reason: "data.pkl: \(r)") }
        // The stack and, in step, the nesting depth of each value on it.
        var stack: [Value] = [], depths: [Int] = []
        var memo: [Int: (Value, Int)] = [:]
        var p = 0
        func byte() throws -> Int { guard p < b.count else { throw fail("truncated") }; p += 1; return Int(b[p - 1]) }
        func le(_ n: Int) throws -> Int { var v = 0; for i in 0..<n { v |= try byte() << (8 * i) }; return v }
        func line() throws -> String {
            guard let e = b[p...].firstIndex(of: 0x0A) else { throw fail("truncated") }
            let s = String(decoding: b[p..<e], as: UTF8.self); p = e + 1; return s
        }
        func push(_ v: Value, _ depth: Int = 0) throws {
            guard depth <= maxDepth else { throw fail("values nested more than \(maxDepth) deep (not a state_dict)") }
            stack.append(v); depths.append(depth)
        }
        func popMark() throws -> ([Value], Int) {
            guard let m = stack.lastIndex(where: { if case .mark = $0 { return true }; return false }) else { throw fail("no MARK") }
            let items = Array(stack[(m + 1)...]), depth = depths[(m + 1)...].max() ?? 0
            stack.removeSubrange(m...); depths.removeSubrange(m...)
            return (items, depth)
        }
        func pop() throws -> (Value, Int) {
            guard let v = stack.popLast(), let d = depths.popLast() else { throw fail("stack underflow") }
            return (v, d)
        }
        func ints(_ v: Value) throws -> [Int] {
            guard case .tuple(let t) = v else { throw fail("expected a tuple of ints") }
            return try t.map { if case .int(let i) = $0 { return i }; throw fail("expected an int") }
        }
        // Adding to a container copies it (values are immutable): the copies are counted and bounded, so
        // millions of one-item APPENDS cannot take quadratic time.
        var copies = 0
        func spend(_ n: Int) throws {
            copies += n
            guard copies <= maxCopies else { throw fail("more than \(maxCopies) container items built: not a state_dict") }
        }
        func setItems(_ target: Value, _ kv: [Value]) throws -> Value {
            guard case .dict(var d) = target else {
                if case .object(let n, var items) = target { try spend(items.count + kv.count); items += kv; return .object(n, items) }
                throw fail("SETITEMS on a non-dict")
            }
            try spend(d.count + kv.count)
            var i = 0
            while i + 1 < kv.count { d.append((kv[i], kv[i + 1])); i += 2 }
            return .dict(d)
        }
        func memoize(_ key: Int) throws {
            guard let v = stack.last, let d = depths.last else { throw fail("PUT on an empty stack") }
            memo[key] = (v, d)
        }
        func recall(_ key: Int) throws {
            guard let (v, d) = memo[key] else { throw fail("GET of memo \(key), which was never PUT") }
            try push(v, d)
        }
        loop: while true {
            let op = try byte()
            switch op {
            case 0x80: _ = try byte()                                      // PROTO
            case 0x63: let m = try line(), n = try line(); try push(.global(m + "." + n))
            case 0x71: try memoize(try byte())                            // BINPUT
            case 0x72: try memoize(try le(4))                             // LONG_BINPUT
            case 0x68: try recall(try byte())                             // BINGET
            case 0x6A: try recall(try le(4))                              // LONG_BINGET
            case 0x29: try push(.tuple([]), 1)
            case 0x28: try push(.mark)
            case 0x74: let (items, d) = try popMark(); try push(.tuple(items), d + 1)
            case 0x85: let (a, d) = try pop(); try push(.tuple([a]), d + 1)
            case 0x86: let (b2, d2) = try pop(), (a, d1) = try pop(); try push(.tuple([a, b2]), max(d1, d2) + 1)
            case 0x87: let (c, d3) = try pop(), (b2, d2) = try pop(), (a, d1) = try pop(); try push(.tuple([a, b2, c]), max(d1, d2, d3) + 1)
            case 0x58: let n = try le(4); guard n <= b.count - p else { throw fail("truncated") }
                try push(.string(String(decoding: b[p..<(p + n)], as: UTF8.self))); p += n
            case 0x8C: let n = try byte(); guard n <= b.count - p else { throw fail("truncated") }   // SHORT_BINUNICODE
                try push(.string(String(decoding: b[p..<(p + n)], as: UTF8.self))); p += n
            case 0x4B: try push(.int(try byte()))
            case 0x4D: try push(.int(try le(2)))
            case 0x4A: try push(.int(Int(Int32(truncatingIfNeeded: try le(4)))))
            case 0x8A:                                                     // LONG1: up to 8 bytes, two's complement
                let n = try byte()
                guard n <= 8 else { throw fail("LONG1 of \(n) bytes: an integer too large for a state_dict") }
                var v: UInt64 = 0
                for i in 0..<n { v |= UInt64(try byte()) << UInt64(8 * i) }
                if n > 0 && n < 8 && v & (1 << UInt64(8 * n - 1)) != 0 { v |= ~0 << UInt64(8 * n) }   // sign-extend
                try push(.int(Int(Int64(bitPattern: v))))
            case 0x88: try push(.bool(true))
            case 0x89: try push(.bool(false))
            case 0x4E: try push(.none)
            case 0x7D: try push(.dict([]), 1)
            case 0x5D: try push(.list([]), 1)
            case 0x51: let (v, d) = try pop(); try push(.persistent(v), d + 1)   // BINPERSID
            case 0x73:                                                     // SETITEM
                let (v, dv) = try pop(), (k, dk) = try pop(), (t, dt) = try pop()
                try push(try setItems(t, [k, v]), max(dt, max(dk, dv) + 1))
            case 0x75: let (kv, d) = try popMark(), (t, dt) = try pop(); try push(try setItems(t, kv), max(dt, d + 1))
            case 0x65:                                                     // APPENDS
                let (items, d) = try popMark(), (l, dl) = try pop()
                guard case .list(let list) = l else { throw fail("APPENDS on a non-list") }
                try spend(list.count + items.count)
                try push(.list(list + items), max(dl, d + 1))
            case 0x62: _ = try pop()                                       // BUILD: state ignored (_metadata)
            case 0x52:                                                     // REDUCE
                let (args, da) = try pop(), (callable, _) = try pop()
                guard case .global(let g) = callable, case .tuple(let a) = args else { throw fail("REDUCE of a non-global") }
                switch g {
                case "collections.OrderedDict": try push(.dict([]), 1)
                case "torch._utils._rebuild_tensor_v2":
                    guard a.count >= 4, case .persistent(.tuple(let pid)) = a[0], pid.count >= 5,
                          case .global(let st) = pid[1], case .string(let key) = pid[2], case .int(let off) = a[1] else {
                        throw fail("unexpected _rebuild_tensor_v2 arguments")
                    }
                    try push(.tensor(TensorRef(name: "", key: key, dtype: String(st.split(separator: ".").last ?? ""),
                                               offset: off, shape: try ints(a[2]), stride: try ints(a[3]))), 1)
                default: try push(.object(g, a), da + 1)
                }
            case 0x2E: break loop                                          // STOP
            default: throw fail(String(format: "unsupported pickle opcode 0x%02x", op))
            }
        }
        guard case .dict(let d)? = stack.last else { throw fail("the pickled object is not a dict") }
        return try d.map { k, v in
            guard case .string(let n) = k, case .tensor(var t) = v else { throw fail("a state_dict entry is not name → tensor") }
            t.name = n
            return t
        }
    }
}
