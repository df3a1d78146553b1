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
        let hf = HFCheckpoint.expectedTensors(c)
        let gguf = GGUFModel.expectedTensors(c)
        var hfName = [String: String]()   // GGUF name -> HF name (same order of layers and blocks)
        let map = ["attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                   "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                   "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"]
        for (name, _) in gguf {
            if name == "token_embd.weight" { hfName[name] = "model.embed_tokens.weight" }
            else if name == "output_norm.weight" { hfName[name] = "model.norm.weight" }
            else if name == "output.weight" { hfName[name] = "lm_head.weight" }
            else {
                let parts = name.split(separator: ".")   // blk, L, kind, weight
                hfName[name] = "model.layers.\(parts[1]).\(map[String(parts[2])]!).weight"
            }
        }
        precondition(Set(hfName.values) == Set(hf.map(\.name)))
        return gguf.map { name, shape in
            let ggml: GGMLType
            if shape.count == 1 { ggml = .f32 }
            else if type == .q8_0 && shape[1] % Q8_0.blockSize == 0 { ggml = .q8_0 }
            else { ggml = .f16 }   // as llama.cpp: rows that do not fill Q8_0 blocks stay F16
            let heads = name.hasSuffix("attn_q.weight") ? c.numAttentionHeads
                : name.hasSuffix("attn_k.weight") ? c.kvHeads : nil
            return Plan(spec: .init(name, ggml, shape), source: hfName[name]!, ropeHeads: heads)
        }
    }

    /// The GGUF metadata llama.cpp needs for a LLaMA model (the keys its converter writes).
    static func metadata(_ c: LlamaConfig, name: String, type: OutputType, tokenizer: Data, source: String) throws -> [(String, GGUFValue)] {
        var m: [(String, GGUFValue)] = [
            ("general.architecture", .string("llama")),
            ("general.name", .string(name)),
            ("general.file_type", .uint32(type.fileType)),
            ("general.quantization_version", .uint32(2)),
            ("llama.context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
            ("llama.embedding_length", .uint32(UInt32(c.hiddenSize))),
            ("llama.block_count", .uint32(UInt32(c.numHiddenLayers))),
            ("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize))),
            ("llama.rope.dimension_count", .uint32(UInt32(c.headDimension))),
            ("llama.attention.head_count", .uint32(UInt32(c.numAttentionHeads))),
            ("llama.attention.head_count_kv", .uint32(UInt32(c.kvHeads))),
            ("llama.attention.layer_norm_rms_epsilon", .float32(c.epsF32)),
            ("llama.rope.freq_base", .float32(Float(c.theta))),
            ("llama.vocab_size", .uint32(UInt32(c.vocabSize))),
        ]
        if c.headDimension != c.hiddenSize / c.numAttentionHeads {
            m += [("llama.attention.key_length", .uint32(UInt32(c.headDimension))),
                  ("llama.attention.value_length", .uint32(UInt32(c.headDimension)))]
        }
        // llama.cpp wants one vocabulary entry per embedding row: pad as its converter does.
        var vocab = try SentencePieceModel.parse(tokenizer, source: source)
        if vocab.pieces.count < c.vocabSize {
            for i in 1...(c.vocabSize - vocab.pieces.count) {
                vocab.pieces.append((piece: "[PAD\(i)]", score: -1000, type: SentencePieceModel.PieceType.unused.rawValue))
            }
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

    public static func run(checkpoint ck: HFCheckpoint, tokenizer: Data, tokenizerSource: String, outPath: String,
                           type: OutputType, pool: ThreadPool, progress: ((Progress) -> Void)? = nil) throws {
        let c = ck.config
        let plans = plan(c, type: type)
        let name = URL(fileURLWithPath: ck.directory).standardizedFileURL.lastPathComponent
        let writer = try GGUFWriter(path: outPath, metadata: try metadata(c, name: name, type: type, tokenizer: tokenizer,
                                                                          source: tokenizerSource),
                                    tensors: plans.map(\.spec))
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
            let st = info.dtype.quantType!
            let rows = p.spec.shape.count == 2 ? p.spec.shape[0] : 1
            let cols = p.spec.shape.last!
            let q = p.spec.type.quantType!
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
        try writer.commit()
    }
}
