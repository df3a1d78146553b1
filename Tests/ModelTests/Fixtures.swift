import Foundation
import Model
import Quant
import Formats
import Testing

/// Paths to the committed reference fixtures (Tests/fixtures), produced by Tests/fixtures/make_fixtures.py.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures")
    static let repo = root.deletingLastPathComponent().deletingLastPathComponent()
    static let models = ["mha-f32", "gqa-bf16", "gqa-f16-theta"]
    static func model(_ name: String) -> String { root.appendingPathComponent("models/\(name)").path }
    static func reference(_ name: String) -> String { root.appendingPathComponent("references/\(name).safetensors").path }
    static var llama2Tokenizer: String { root.appendingPathComponent("llama2-tokenizer/tokenizer.model").path }
    static var corpus: String { repo.appendingPathComponent("data/tokenizer/corpus.txt").path }

    struct Case: Decodable {
        let name: String
        let template: String
        let text: String?
        let messages: [ChatMessage]?
        let system: String?
        let suffix: String?
        let rendered: String
        let ids: [Int32]

        var renderer: PromptRenderer {
            PromptRenderer(template: PromptTemplate(rawValue: template)!, suffix: suffix, systemPrompt: system)
        }
        func render() throws -> String {
            if let messages { return try renderer.render(messages: messages) }
            return try renderer.render(text!)
        }
    }

    struct TokenCase: Decodable {
        let text: String
        let ids: [Int32]
    }

    static let cases: [Case] = load("cases.json")
    static let llama2TokenCases: [TokenCase] = load("llama2_token_cases.json")

    static func load<T: Decodable>(_ file: String) -> T {
        let data = try! Data(contentsOf: root.appendingPathComponent(file))
        return try! JSONDecoder().decode(T.self, from: data)
    }

    /// A fresh load for every caller: tests run in parallel, and a LlamaModel's run state serves one forward
    /// pass at a time (a shared cached model let two tests race on its buffers: logits off by 100%).
    static func loadedModel(_ name: String) throws -> LoadedModel {
        try LoadedModel.load(path: model(name), includeHead: true, threads: 2)
    }
}

/// max|a - b| / max|b|: the relative error measure of the Foundation issue.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
    var maxDiff: Float = 0, maxRef: Float = 0
    for (x, y) in zip(a, b) {
        maxDiff = max(maxDiff, abs(x - y))
        maxRef = max(maxRef, abs(y))
    }
    if maxDiff.isNaN { return .infinity }
    return maxDiff / maxRef
}

func temporaryDirectory(_ name: String = #function) -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("llamaprobe-test-\(name.filter(\.isLetter))-\(UUID().uuidString.prefix(8))").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}
