import Foundation
import Quant
import Formats

public struct PromptFileError: LocalizedError, Equatable {
    public let file: String
    public let line: Int
    public let reason: String
    public var errorDescription: String? { "\(file):\(line): \(reason)" }
}

/// Prompts files: one prompt per line; `\n`, `\t` and `\\` are escapes; lines are not stripped.
public enum PromptFile {
    public static func read(path: String) throws -> [String] {
        return try parse(try Files.readText(path), file: path)
    }

    public static func parse(_ text: String, file: String = "<prompts>") throws -> [String] {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }   // the newline ending the last line
        return try lines.enumerated().map { n, line in try unescape(line, file: file, line: n + 1) }
    }

    static func unescape(_ line: String, file: String, line number: Int) throws -> String {
        var out = ""
        var it = line.unicodeScalars.makeIterator()
        while let u = it.next() {
            guard u == "\\" else { out.unicodeScalars.append(u); continue }
            switch it.next() {
            case "n": out += "\n"
            case "t": out += "\t"
            case "\\": out += "\\"
            case let other?:
                throw PromptFileError(file: file, line: number, reason: "unknown escape '\\\(other)' (only \\n, \\t and \\\\ are escapes; write a backslash as \\\\)")
            case nil:
                throw PromptFileError(file: file, line: number, reason: "line ends with a lone backslash (write it as \\\\)")
            }
        }
        return out
    }

    public static func escape(_ prompt: String) -> String {
        prompt.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
            .replacingOccurrences(of: "\t", with: "\\t")
    }
}

/// What to capture per prompt.
public struct CaptureOptions: Sendable, Equatable {
    public var positions: Positions = .last
    public var embeddings = false
    public var logits = false
    /// The block hooks to keep, in output order, without repeats (default: resid_post).
    public var hooks: [Hook] = [.residPost]
    public init(positions: Positions = .last, embeddings: Bool = false, logits: Bool = false, hooks: [Hook] = [.residPost]) {
        self.positions = positions; self.embeddings = embeddings; self.logits = logits; self.hooks = hooks
    }
}

/// The residuals of one prompt: per hook [layers, rows, d] (rows = 1 for `.last`).
public struct PromptResiduals {
    public var tokens: [Int32]
    /// Every requested hook's values, [layers, rows, d].
    public var hooks: [Hook: [Float]]
    public var embedding: [Float]?
    public var logitsLast: [Float]?
    /// resid_post [layers, rows, d] (empty when not requested).
    public var residPost: [Float] { hooks[.residPost] ?? [] }
}

extension LlamaModel {
    /// Runs one tokenized prompt and collects the requested hooks of every layer (and optionally the
    /// embedding output and the last position's logits).
    public func capture(_ tokens: [Int32], _ options: CaptureOptions, steering: Steering = .none) throws -> PromptResiduals {
        let c = config
        let rows = options.positions == .all ? tokens.count : 1
        let d = c.hiddenSize
        let perLayer = rows * d
        guard Set(options.hooks).count == options.hooks.count else {
            throw ForwardError(reason: "hooks \(options.hooks.map(\.rawValue).joined(separator: ",")): a hook is listed twice")
        }
        var values = [Float](repeating: 0, count: options.hooks.count * c.numHiddenLayers * perLayer)
        let slot = Dictionary(uniqueKeysWithValues: options.hooks.enumerated().map { ($1, $0) })
        var embed: [Float]? = options.embeddings ? [Float](repeating: 0, count: perLayer) : nil
        let logits = try values.withUnsafeMutableBufferPointer { vp in
            try forward(tokens, positions: options.positions, logits: options.logits, steering: steering,
                        hooks: Set(options.hooks)) { point, view in
                precondition(view.count == rows)
                if let (hook, l) = point.hook {
                    guard let k = slot[hook] else { return }
                    (vp.baseAddress! + (k * c.numHiddenLayers + l) * perLayer).update(from: view.pointer, count: perLayer)
                } else {
                    embed?.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: view.pointer, count: perLayer) }
                }
            }
        }
        let size = c.numHiddenLayers * perLayer
        let hooks = Dictionary(uniqueKeysWithValues: options.hooks.enumerated().map { k, h in
            (h, Array(values[(k * size)..<((k + 1) * size)]))
        })
        return PromptResiduals(tokens: tokens, hooks: hooks, embedding: embed, logitsLast: logits)
    }
}

/// `llamaprobe residuals`: prompts in, one safetensors file out with, per prompt i, `p{i}.tokens` (I64 [T]),
/// one `p{i}.{hook}` per requested hook (F32 [layers, d] or [layers, T, d]; default `p{i}.resid_post`; see
/// `Hook` for `resid_pre`, `attn_out`, `resid_mid`, `mlp_out`), and when asked `p{i}.embed` ([d] or [T, d]) and
/// `p{i}.logits_last` ([vocab]). Tensors are streamed prompt by prompt; the file appears only when complete.
/// `readout`: the readout recipe (recorded as JSON) and its tokenization (`ReadoutRecipe.tokens`); without
/// it, the renderer's prompt is tokenized whole.
public enum ResidualsJob {
    public static func run(model loaded: LoadedModel, prompts: [String], renderer: PromptRenderer,
                           options: CaptureOptions, outPath: String, readout: (json: String, tokens: (String) throws -> [Int32])? = nil,
                           steering: Steering = .none,
                           progress: ((Int, Int, Int) -> Void)? = nil) throws {
        let c = loaded.config
        let tokenized = try prompts.enumerated().map { i, p -> [Int32] in
            let ids = try readout.map { try $0.tokens(p) } ?? loaded.tokenizer.encode(try renderer.render(p))
            guard ids.count <= c.maxPositionEmbeddings else {
                throw ForwardError(reason: "prompt \(i + 1) has \(ids.count) tokens, more than max_position_embeddings = \(c.maxPositionEmbeddings)")
            }
            return ids
        }
        let L = c.numHiddenLayers, d = c.hiddenSize
        var specs: [SafeTensorsWriter.Spec] = []
        for (i, ids) in tokenized.enumerated() {
            let T = ids.count
            specs.append(.init("p\(i).tokens", .i64, [T]))
            for h in options.hooks {
                specs.append(.init("p\(i).\(h.rawValue)", .f32, options.positions == .all ? [L, T, d] : [L, d]))
            }
            if options.embeddings { specs.append(.init("p\(i).embed", .f32, options.positions == .all ? [T, d] : [d])) }
            if options.logits { specs.append(.init("p\(i).logits_last", .f32, [c.vocabSize])) }
        }
        let metadata = [
            "format": "llamaprobe-residuals", "version": "1",
            "model": loaded.path, "config": c.summary,
            "template": renderer.template.rawValue, "suffix": renderer.suffix,
            "system_prompt": renderer.systemPrompt ?? "",
            "positions": options.positions.rawValue,
            "hook": options.hooks == [.residPost] ? "resid_post (residual after each block, before the final norm)"
                : options.hooks.map(\.rawValue).joined(separator: ","),
            "prompts": String(prompts.count),
            "model_fingerprint": loaded.fingerprint, "quantization": loaded.quantization,
        ].merging(readout.map { [("readout", $0.json)] } ?? []) { a, _ in a }
        let writer = try SafeTensorsWriter(path: outPath, tensors: specs, metadata: metadata)
        for (i, ids) in tokenized.enumerated() {
            let r = try loaded.model.capture(ids, options, steering: steering)
            try writer.write(ids.map(Int64.init))
            for h in options.hooks { try writer.write(r.hooks[h]!) }
            if let e = r.embedding { try writer.write(e) }
            if let l = r.logitsLast { try writer.write(l) }
            progress?(i + 1, prompts.count, ids.count)
        }
        try writer.commit()
    }
}
