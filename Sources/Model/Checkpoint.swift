import Foundation
import Quant
import Formats

/// A Hugging Face LLaMA checkpoint directory: config.json plus model.safetensors, or shards listed in
/// model.safetensors.index.json. Files are memory-mapped; headers are validated on open.
public final class HFCheckpoint: @unchecked Sendable {
    public let directory: String
    public let config: LlamaConfig
    public let files: [SafeTensorsFile]
    private var location: [String: (file: SafeTensorsFile, info: TensorInfo)] = [:]

    public init(directory: String) throws {
        self.directory = directory
        guard Self.exists(directory) else { throw FileError(path: directory, reason: "does not exist") }
        guard Files.isDirectory(directory) else {
            throw FileError(path: directory, reason: "expected a Hugging Face checkpoint directory (config.json + *.safetensors)")
        }
        let configPath = directory + "/config.json"
        guard Self.exists(configPath) else {
            throw FileError(path: configPath, reason: "missing: a Hugging Face checkpoint directory needs config.json")
        }
        config = try LlamaConfig.load(path: configPath)

        let indexPath = directory + "/" + Self.indexName
        let singlePath = directory + "/model.safetensors"
        var opened: [String: SafeTensorsFile] = [:]
        if Self.exists(indexPath) {
            let map = try Self.readIndex(indexPath)
            for fileName in Set(map.values).sorted() {
                guard Self.isPlainFileName(fileName) else {
                    throw FileError(path: indexPath, reason: "weight_map names '\(fileName)', not a file of this directory (a plain file name is expected)")
                }
                let shard = directory + "/" + fileName
                guard Self.exists(shard) else {
                    throw FileError(path: shard, reason: "does not exist (listed in \(Self.indexName))")
                }
                opened[fileName] = try SafeTensorsFile(path: shard)
            }
            for (name, fileName) in map.sorted(by: { $0.key < $1.key }) {
                guard let f = opened[fileName] else { continue }   // every value was opened above
                guard let info = f.tensors[name] else {
                    throw SafeTensorsError(file: f.path, tensor: name,
                                           reason: "listed in \(Self.indexName) but not in this shard")
                }
                location[name] = (f, info)
            }
        } else if Self.exists(singlePath) {
            let f = try SafeTensorsFile(path: singlePath)
            opened["model.safetensors"] = f
            for (name, info) in f.tensors { location[name] = (f, info) }
        } else {
            let hasBin = Self.exists(directory + "/pytorch_model.bin") || Self.exists(directory + "/pytorch_model.bin.index.json")
            throw FileError(path: directory, reason: hasBin
                ? "only PyTorch .bin weights found; save the model with safe_serialization=True (safetensors)"
                : "no model.safetensors or \(Self.indexName)")
        }
        files = opened.sorted { $0.key < $1.key }.map(\.value)
        // Before the list of expected tensors is built: a layer count must not exceed what the files hold.
        let present = layersPresent(location.keys, prefix: "model.layers.")
        guard config.numHiddenLayers <= present else {
            throw ConfigError(file: configPath, key: "num_hidden_layers",
                              reason: "is \(config.numHiddenLayers) but the checkpoint holds tensors of only \(present) layers (model.layers.N.*)")
        }
        try validateTensors()
    }

    static let indexName = "model.safetensors.index.json"

    /// True when something is at `path` (a dangling link or a link loop counts: opening it then says what is wrong).
    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// A name of a file directly inside the directory: not empty, no '/', not '.' or '..'.
    static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && name != "." && name != ".." && !name.contains("\0")
    }

    public static func readIndex(_ path: String) throws -> [String: String] {
        let data = try Files.readData(path, limit: 256 << 20)
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let map = obj["weight_map"] as? [String: String] else {
            throw FileError(path: path, reason: "not a safetensors index: expected {\"weight_map\": {tensor: file}}")
        }
        return map
    }

    /// Names and shapes the config implies, in load order.
    public static func expectedTensors(_ c: LlamaConfig) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabSize, d])]
        for l in 0..<c.numHiddenLayers {
            out += LayerTensor.layer(l, c, gguf: false).map { ($0.name, $0.shape) }
        }
        out.append(("model.norm.weight", [d]))
        if !c.tiedEmbeddings { out.append(("lm_head.weight", [c.vocabSize, d])) }
        return out
    }

    /// Every expected tensor is present, a float type, and has the shape the config implies.
    func validateTensors() throws {
        for (name, shape) in Self.expectedTensors(config) {
            guard let (file, info) = location[name] else {
                throw SafeTensorsError(file: files.count == 1 ? files[0].path : directory, tensor: name,
                                       reason: "missing (expected \(shape) from config.json)")
            }
            guard info.dtype.quantType != nil else {
                throw SafeTensorsError(file: file.path, tensor: name,
                                       reason: "dtype \(info.dtype.rawValue) is not supported for weights (F32, F16 or BF16)")
            }
            guard info.shape == shape else {
                throw SafeTensorsError(file: file.path, tensor: name,
                                       reason: "shape \(info.shape) does not match \(shape) implied by config.json")
            }
        }
    }

    public func tensor(_ name: String) throws -> (file: SafeTensorsFile, info: TensorInfo) {
        guard let t = location[name] else {
            throw SafeTensorsError(file: directory, tensor: name, reason: "tensor not found")
        }
        return t
    }

    /// Loads all weights as f32. F32 tensors that are 4-byte aligned in the file are used in place (mapped);
    /// others are converted. Every tensor is scanned for NaN/Inf.
    public func loadWeights(includeHead: Bool, pool: ThreadPool) throws -> LlamaWeights {
        let c = config
        func matrix(_ name: String) throws -> Matrix {
            let (file, info) = try tensor(name)
            let rows = info.shape[0], cols = info.shape.count > 1 ? info.shape[1] : 1
            let src = file.data(info)
            let m: Matrix
            if info.dtype == .f32 && Int(bitPattern: src) % 4 == 0 {
                m = Matrix(pointer: src.assumingMemoryBound(to: Float.self), rows: rows, cols: cols, owner: file)
            } else {
                guard let q = info.dtype.quantType else {
                    throw SafeTensorsError(file: file.path, tensor: name, reason: "dtype \(info.dtype.rawValue) is not a float type")
                }
                let buf = FloatBuffer(count: rows * cols)
                pool.parallelRanges(rows, chunksPerThread: 4) { r in
                    q.toFloat(src + r.lowerBound * cols * info.dtype.elementSize,
                              buf.pointer + r.lowerBound * cols, r.count * cols)
                }
                m = Matrix(buf, rows: rows, cols: cols)
            }
            try checkFinite(m.pointer, count: rows * cols, file: file.path, tensor: name, pool: pool)
            return m
        }
        func vector(_ name: String) throws -> [Float] {
            let m = try matrix(name)
            return Array(UnsafeBufferPointer(start: m.pointer, count: m.rows * m.cols))
        }
        let embedding = try matrix("model.embed_tokens.weight")
        var layers: [LayerWeights] = []
        for l in 0..<c.numHiddenLayers {
            layers.append(try LayerWeights.assemble(layer: l, config: c, gguf: false, vector: vector, linear: { .f32(try matrix($0)) }))
        }
        let finalNorm = try vector("model.norm.weight")
        var head: Linear? = nil
        if includeHead { head = .f32(c.tiedEmbeddings ? embedding : try matrix("lm_head.weight")) }
        return LlamaWeights(config: c, embedding: EmbeddingTable(embedding), layers: layers, finalNorm: finalNorm, head: head,
                            ropeLayout: .rotateHalf)
    }
}

/// How many distinct layer numbers N the tensor names `PREFIX N.…` hold.
func layersPresent<S: Sequence>(_ names: S, prefix: String) -> Int where S.Element == String {
    var present = Set<Int>()
    for n in names where n.hasPrefix(prefix) {
        if let i = Int(n.dropFirst(prefix.count).prefix(while: { $0 != "." })), i >= 0 { present.insert(i) }
    }
    return present.count
}

/// Throws when a weight holds NaN or ±Inf, naming the tensor and the first bad element.
func checkFinite(_ p: UnsafePointer<Float>, count: Int, file: String, tensor: String, pool: ThreadPool) throws {
    let chunks = max(1, min(64, count / 65536))
    var firstBad = [Int](repeating: -1, count: chunks)
    var badCount = [Int](repeating: 0, count: chunks)
    firstBad.withUnsafeMutableBufferPointer { fb in
        badCount.withUnsafeMutableBufferPointer { bc in
            pool.parallelFor(chunks) { c in
                let lo = count * c / chunks, hi = count * (c + 1) / chunks
                var i = lo
                var bad = 0
                while i < hi {
                    // x - x is 0 for finite x and NaN for NaN/Inf: one pass, no branches in the common case.
                    var acc: Float = 0
                    let end = min(hi, i + 4096)
                    for j in i..<end { acc += p[j] - p[j] }
                    if acc != 0 || acc.isNaN {
                        for j in i..<end where !p[j].isFinite {
                            if fb[c] < 0 { fb[c] = j }
                            bad += 1
                        }
                    }
                    i = end
                }
                bc[c] = bad
            }
        }
    }
    let total = badCount.reduce(0, +)
    if total > 0, let first = firstBad.first(where: { $0 >= 0 }) {
        throw SafeTensorsError(file: file, tensor: tensor,
                               reason: "contains \(total) non-finite value(s) (first at element \(first): \(p[first])); refusing to compute with it")
    }
}
