import Foundation
import Quant
import Formats

/// `llamaprobe quantize`: a Hugging Face LLaMA checkpoint to a GGUF file llama.cpp loads, streamed tensor by
/// tensor (bounded memory whatever the model size), written under a temporary name and renamed at the end.
public enum Quantizer {
    public enum OutputType: String, Sendable, CaseIterable {
        case q8_0, f16
        /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_Q8_0 = 7, MOSTLY_F16 = 1).
        var fileType: UInt32 { self == .q8_0 ? 7 : 1 }
    }

    public struct Progress: Sendable {
        public let tensor: String
        public let index: Int
        public let count: Int
        public let bytesDone: Int
        public let bytesTotal: Int
    }

    /// One output tensor: its GGUF name and type, and where its rows come from in the checkpoint.
    struct Plan {
        let spec: GGUFWriter.Spec
        let source: String
        /// For Q and K: heads, to permute rows into the interleaved rotary layout llama.cpp expects.
        let ropeHeads: Int?
    }

    static func plan(_ c: LlamaConfig, type: OutputType) -> [Plan] {
        // The two lists name the same tensors in the same order (embedding, each layer's rows of
        // `LayerTensor.all`, final norm, head): pair them by position.
        let hf = HFCheckpoint.expectedTensors(c)
        let gguf = GGUFModel.expectedTensors(c)
        return zip(gguf, hf).map { g, h in
            let (name, shape) = g
            let ggml: GGMLType
            if shape.count == 1 { ggml = .f32 }
            else if type == .q8_0 && shape[1] % Q8_0.blockSize == 0 { ggml = .q8_0 }
            else { ggml = .f16 }   // as llama.cpp: rows that do not fill Q8_0 blocks stay F16
            // llama.cpp's `llama` architecture runs interleaved rope (its converter permutes Q and K);
            // `qwen2` runs NEOX rope on Hugging Face's rotate-half rows, which are written as they are.
            let permute = GGUFModel.architecture(c) == "llama"
            let heads = !permute ? nil : name.hasSuffix("attn_q.weight") ? c.numAttentionHeads
                : name.hasSuffix("attn_k.weight") ? c.kvHeads : nil
            return Plan(spec: .init(name, ggml, shape), source: h.name, ropeHeads: heads)
        }
    }

    public struct QuantizeError: LocalizedError, Equatable {
        public let file: String
        public let reason: String
        public var errorDescription: String? { "\(file): \(reason)" }
    }

    /// The GGUF metadata llama.cpp needs for a LLaMA model (the keys its converter writes). Values a GGUF
    /// key cannot represent are refused naming the config.json key. The special token ids are those
    /// SentencePiece itself uses (found through the CONTROL / UNKNOWN pieces, as `tokenizer` reports them),
    /// not the trainer_spec's recorded ids, which may be stale.
    static func metadata(_ c: LlamaConfig, name: String, type: OutputType, tokenizer: Tokenizer, configFile: String) throws -> [(String, GGUFValue)] {
        func u32(_ key: String, _ v: Int) throws -> GGUFValue {
            guard let x = UInt32(exactly: v) else {
                throw ConfigError(file: configFile, key: key, reason: "\(v) cannot be stored in GGUF (a UINT32: at most \(UInt32.max))")
            }
            return .uint32(x)
        }
        func f32(_ key: String, _ v: Double) throws -> GGUFValue {
            let f = Float(v)
            guard f.isFinite, f > 0 else {
                throw ConfigError(file: configFile, key: key, reason: "\(v) cannot be stored in GGUF as a positive FLOAT32 (it becomes \(f))")
            }
            return .float32(f)
        }
        let arch = GGUFModel.architecture(c)
        func key(_ k: String) -> String { GGUFModel.keyName(k, arch: arch) }
        var m: [(String, GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.name", .string(name)),
            ("general.file_type", .uint32(type.fileType)),
            ("general.quantization_version", .uint32(2)),
            (key("max_position_embeddings"), try u32("max_position_embeddings", c.maxPositionEmbeddings)),
            (key("hidden_size"), try u32("hidden_size", c.hiddenSize)),
            (key("num_hidden_layers"), try u32("num_hidden_layers", c.numHiddenLayers)),
            (key("intermediate_size"), try u32("intermediate_size", c.intermediateSize)),
            ("\(arch).rope.dimension_count", try u32("head_dim", c.headDimension)),
            (key("num_attention_heads"), try u32("num_attention_heads", c.numAttentionHeads)),
            (key("num_key_value_heads"), try u32("num_key_value_heads", c.kvHeads)),
            (key("rms_norm_eps"), try f32("rms_norm_eps", c.rmsNormEps)),
            (key("rope_theta"), try f32("rope_theta", c.theta)),
            ("\(arch).vocab_size", try u32("vocab_size", c.vocabSize)),
        ]
        if let factor = c.linearRopeFactor {
            m += [("\(arch).rope.scaling.type", .string("linear")), (key("rope_scaling"), try f32("rope_scaling", factor))]
        }
        if c.headDimension != c.hiddenSize / c.numAttentionHeads {
            m += [(key("head_dim"), try u32("head_dim", c.headDimension)),
                  ("\(arch).attention.value_length", try u32("head_dim", c.headDimension))]
        }
        if c.hasMixedWindows {
            throw ConfigError(file: configFile, key: c.layerTypes != nil ? "layer_types" : "max_window_layers",
                              reason: "only some layers use the attention window (sliding_window \(c.attentionWindow ?? 0)): GGUF records one window for every layer, so this model cannot be written as GGUF; use the Hugging Face directory directly")
        }
        if let w = c.attentionWindow { m.append((key("sliding_window"), try u32("sliding_window", w))) }
        // llama.cpp wants one vocabulary entry per embedding row: pad as its converter does.
        if let bpe = tokenizer.bpe {
            guard bpe.vocabSize <= c.vocabSize else {
                throw TokenizerError(source: tokenizer.source, reason: "has \(bpe.vocabSize) tokens, more than vocab_size \(c.vocabSize) of \(configFile)")
            }
            return m + bpe.ggufMetadata(rows: c.vocabSize, eosID: tokenizer.eosID)
        }
        var vocab = try SentencePieceModel.parse(tokenizer.serialized, source: tokenizer.source)
        guard vocab.pieces.count <= c.vocabSize else {
            throw TokenizerError(source: tokenizer.source, reason: "has \(vocab.pieces.count) pieces, more than vocab_size \(c.vocabSize) of \(configFile)")
        }
        if vocab.pieces.count < c.vocabSize {
            for i in 1...(c.vocabSize - vocab.pieces.count) {
                vocab.pieces.append((piece: "[PAD\(i)]", score: -1000, type: SentencePieceModel.PieceType.unused.rawValue))
            }
        }
        vocab.bosID = Int(tokenizer.bosID)
        vocab.eosID = Int(tokenizer.eosID)
        vocab.unkID = Int(tokenizer.unkID)
        vocab.padID = Int(tokenizer.padID)
        for (what, id) in [("BOS", vocab.bosID), ("EOS", vocab.eosID), ("UNK", vocab.unkID)] where id < 0 {
            throw TokenizerError(source: tokenizer.source, reason: "defines no \(what) piece (a CONTROL or UNKNOWN piece such as <s>, </s>, <unk>); GGUF needs one")
        }
        m += SentencePieceModel.ggufMetadata(vocab)
        return m
    }

    /// Source row for output row `r` of a Q/K projection with `heads` heads: within each head, output rows
    /// (2i, 2i+1) are input rows (i, i + head_dim/2) — llama.cpp's `permute` for the interleaved layout.
    @inline(__always)
    static func ropeSourceRow(_ r: Int, rows: Int, heads: Int) -> Int {
        let hd = rows / heads, half = hd / 2
        let h = r / hd, j = r % hd
        return h * hd + (j % 2) * half + j / 2
    }

    /// Writes the GGUF under `.OUT.tmp-PID` (removed by the next run if this one is killed), opens the written
    /// file with the loader's own readers (GGUF header, `GGUFModel.config`, the tensor table, the tokenizer)
    /// and only then renames it to `outPath`: a file this project cannot read is never installed.
    public static func run(checkpoint ck: HFCheckpoint, tokenizer: Data, tokenizerSource: String, outPath: String,
                           type: OutputType, pool: ThreadPool, progress: ((Progress) -> Void)? = nil) throws {
        try run(checkpoint: ck, tokenizer: try Tokenizer(serialized: tokenizer, source: tokenizerSource), outPath: outPath,
                type: type, pool: pool, progress: progress)
    }

    /// As above with a loaded tokenizer: SentencePiece is written as llama.cpp's "llama" vocabulary, byte-level
    /// BPE as its "gpt2" one (tokens, types, merges, `tokenizer.ggml.pre`).
    public static func run(checkpoint ck: HFCheckpoint, tokenizer tok: Tokenizer, outPath: String,
                           type: OutputType, pool: ThreadPool, progress: ((Progress) -> Void)? = nil) throws {
        let c = ck.config
        let plans = plan(c, type: type)
        let name = URL(fileURLWithPath: ck.directory).standardizedFileURL.lastPathComponent
        var meta = try metadata(c, name: name, type: type, tokenizer: tok, configFile: ck.directory + "/config.json")
        // The chat template, as llama.cpp's converter writes it (tokenizer_config.json or chat_template.jinja).
        if let template = try TokenizerConfig.read(directory: ck.directory)?.chatTemplate {
            meta.append((SentencePieceModel.Key.chatTemplate, .string(template)))
        }
        // The storage type it was quantized from. (The model fingerprint is not recorded: the loader computes
        // it from the weights themselves, and the GGUF's Q8_0 rows give the source directory's fingerprint.)
        meta += [("llamaprobe.source_quantization", .string(LoadedModel.storageName(c.storageDtype)))]
        for p in plans {
            let (file, info) = try ck.tensor(p.source)
            guard info.dtype.quantType != nil, p.spec.type.quantType != nil, p.spec.shape.count <= 2 else {
                throw SafeTensorsError(file: file.path, tensor: p.source, reason: "dtype \(info.dtype.rawValue) cannot be quantized (F32, F16 or BF16)")
            }
        }

        // Llama-3.1's rope scaling: llama.cpp's rope_freqs.weight (first, as its converter writes it).
        let ropeFactors = c.llama3RopeFactors
        let ropeSpec = ropeFactors.map { GGUFWriter.Spec(GGUFModel.ropeFreqsTensor, .f32, [$0.count]) }
        let writer = try GGUFWriter(path: outPath, metadata: meta, tensors: (ropeSpec.map { [$0] } ?? []) + plans.map(\.spec))
        if let ropeFactors { try writer.write(ropeFactors) }
        let total = plans.reduce(0) { $0 + $1.spec.byteCount }
        var done = 0
        let chunkElements = 1 << 22   // 16 MB of f32 per chunk
        let f32 = FloatBuffer(count: chunkElements)
        let out = UnsafeMutableRawPointer.allocate(byteCount: chunkElements * 4, alignment: 64)
        defer { out.deallocate() }
        for (i, p) in plans.enumerated() {
            progress?(Progress(tensor: p.spec.name, index: i, count: plans.count, bytesDone: done, bytesTotal: total))
            let (file, info) = try ck.tensor(p.source)
            let src = file.data(info)
            guard let st = info.dtype.quantType, let q = p.spec.type.quantType, let cols = p.spec.shape.last else { continue }
            let rows = p.spec.shape.count == 2 ? p.spec.shape[0] : 1
            let rowsPerChunk = max(1, chunkElements / cols)
            var r0 = 0
            while r0 < rows {
                let n = min(rowsPerChunk, rows - r0)
                var bad: (Int, Float)? = nil
                let lock = NSLock()
                pool.parallelRanges(n, chunksPerThread: 2) { range in
                    for r in range {
                        let outRow = r0 + r
                        let inRow = p.ropeHeads.map { ropeSourceRow(outRow, rows: rows, heads: $0) } ?? outRow
                        let dst = f32.pointer + r * cols
                        st.toFloat(src + inRow * cols * info.dtype.elementSize, dst, cols)
                        if let k = (0..<cols).first(where: { !dst[$0].isFinite }) {
                            lock.lock(); if bad == nil { bad = (inRow * cols + k, dst[k]) }; lock.unlock()
                            continue
                        }
                        q.fromFloat(dst, out + r * q.byteCount(elements: cols), cols)
                    }
                }
                if let (index, value) = bad {
                    throw SafeTensorsError(file: file.path, tensor: p.source,
                                           reason: "element \(index) is \(value); refusing to quantize non-finite weights")
                }
                try writer.write(UnsafeRawBufferPointer(start: out, count: n * q.byteCount(elements: cols)))
                r0 += n
            }
            file.release(info)
            done += p.spec.byteCount
        }
        progress?(Progress(tensor: "", index: plans.count, count: plans.count, bytesDone: total, bytesTotal: total))
        // Installed only once it reads back (AtomicFileWriter also removed leftovers of killed runs).
        try writer.commit(verify: { staged in
            do { try verify(staged, config: c, tokenizer: tok) } catch {
                throw QuantizeError(file: outPath, reason: "the written file does not read back, so it was not installed: \(error.localizedDescription)")
            }
        })
    }

    /// Reads a written GGUF back as `LoadedModel.loadGGUF` would: header and tensor table, the config
    /// (it must equal the source's), every expected tensor with its shape and a supported type, and the
    /// tokenizer rebuilt from the vocabulary with the source tokenizer's special ids.
    static func verify(_ path: String, config c: LlamaConfig, tokenizer tok: Tokenizer) throws {
        let g = try GGUFFile(path: path)
        let read = try GGUFModel.config(g)
        func same<T: Equatable>(_ what: String, _ a: T, _ b: T) throws {
            guard a == b else { throw GGUFError(file: path, reason: "\(what) reads back as \(b), expected \(a)") }
        }
        try same("the layer count", c.numHiddenLayers, read.numHiddenLayers)
        try same("the sizes", [c.hiddenSize, c.intermediateSize, c.numAttentionHeads, c.kvHeads, c.headDimension, c.vocabSize, c.maxPositionEmbeddings],
                 [read.hiddenSize, read.intermediateSize, read.numAttentionHeads, read.kvHeads, read.headDimension, read.vocabSize, read.maxPositionEmbeddings])
        try same("tied embeddings", c.tiedEmbeddings, read.tiedEmbeddings)
        try same("the q/k/v biases", c.hasQKVBias, read.hasQKVBias)
        try same("the attention window", c.attentionWindow, read.attentionWindow)
        try same("rms_norm_eps (float32)", c.epsF32, read.epsF32)
        try same("rope_theta (float32)", Float(c.theta), Float(read.theta))
        try same("the linear rope scaling factor", c.linearRopeFactor.map(Float.init), read.linearRopeFactor.map(Float.init))
        try same("the llama3 rope factors", c.llama3RopeFactors, try GGUFModel.ropeFreqFactors(g, config: read))
        for (name, shape) in GGUFModel.expectedTensors(read) {
            let t = try g.info(name)
            guard t.shape == shape else { throw GGUFError(file: path, tensor: name, reason: "shape \(t.shape) read back, expected \(shape)") }
            _ = try g.quantType(t)
        }
        let back = try Tokenizer.fromGGUF(g)
        try same("the BOS id", tok.bosID, back.bosID)
        try same("the EOS id", tok.eosID, back.eosID)
        try same("the UNK id", tok.unkID, back.unkID)
        try same("whether BOS is added", tok.addsBOS, back.addsBOS)
        if let a = tok.bpe, let b = back.bpe {
            try same("the token count", a.vocabSize, b.vocabSize)
            try same("the merge count", a.mergeList.count, b.mergeList.count)
            try same("the pre-tokenizer", a.pattern, b.pattern)
        }
        guard back.vocabSize <= read.vocabSize else {
            throw GGUFError(file: path, reason: "the vocabulary has \(back.vocabSize) pieces for \(read.vocabSize) embedding rows")
        }
    }
}
