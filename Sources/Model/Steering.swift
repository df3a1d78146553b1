import Foundation
import Formats
import Quant

/// One intervention at the write point: `strength · v/‖v‖` added to the output of block `layer`
/// (TransformerLens `blocks.L.hook_resid_post`) at every position, prompt and generated alike.
public struct Intervention: Sendable, Equatable {
    public let layer: Int
    public let vector: [Float]
    public let strength: Float
    /// Where the vector came from, as the user named it (recorded with outputs).
    public let source: String

    public init(layer: Int, vector: [Float], strength: Float, source: String) {
        self.layer = layer; self.vector = vector; self.strength = strength; self.source = source
    }

    /// "sha256:<hex>" of the vector's f32 little-endian bytes (recorded so a steered output names its vector).
    public var vectorFingerprint: String {
        var h = SHA256()
        vector.withUnsafeBytes { h.update($0) }
        return "sha256:" + SHA256.hex(h.finalize())
    }
}

public struct SteeringError: LocalizedError, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var errorDescription: String? { reason }
}

/// The interventions of a run, validated against a model and summed per layer (several interventions at
/// one layer add up). `Steering.none` changes nothing.
public struct Steering: Sendable {
    public let interventions: [Intervention]
    /// Per block: the sum of strength · v/‖v‖ of its interventions, or empty when none.
    let deltas: [[Float]]

    public static let none = Steering(interventions: [], deltas: [])

    private init(interventions: [Intervention], deltas: [[Float]]) {
        self.interventions = interventions; self.deltas = deltas
    }

    /// Validates every intervention against `config` (layer, width, finite non-zero vector, finite strength).
    public init(_ interventions: [Intervention], config c: LlamaConfig) throws {
        var deltas = [[Float]](repeating: [], count: interventions.isEmpty ? 0 : c.numHiddenLayers)
        for iv in interventions {
            guard (0..<c.numHiddenLayers).contains(iv.layer) else {
                throw SteeringError("\(iv.source): layer \(iv.layer) is not a block of this model (0...\(c.numHiddenLayers - 1))")
            }
            guard iv.vector.count == c.hiddenSize else {
                throw SteeringError("\(iv.source): the vector has \(iv.vector.count) values but the model's hidden size is \(c.hiddenSize)")
            }
            if let i = iv.vector.firstIndex(where: { !$0.isFinite }) {
                throw SteeringError("\(iv.source): element \(i) of the vector is \(iv.vector[i]); a steering vector must be finite")
            }
            guard iv.strength.isFinite else { throw SteeringError("\(iv.source): strength \(iv.strength) is not finite") }
            // ‖v‖ in double: a vector of large f32 values does not overflow.
            let norm = iv.vector.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            guard norm > 0, norm.isFinite else { throw SteeringError("\(iv.source): the vector is zero (no direction to steer along)") }
            if deltas[iv.layer].isEmpty { deltas[iv.layer] = [Float](repeating: 0, count: c.hiddenSize) }
            // As the reference hook computes it in float32: strength * (v / ‖v‖).
            let inv = Float(norm)
            for i in 0..<c.hiddenSize { deltas[iv.layer][i] += iv.strength * (iv.vector[i] / inv) }
        }
        self.interventions = interventions
        self.deltas = interventions.isEmpty ? [] : deltas
    }

    public var isEmpty: Bool { interventions.isEmpty }

    /// Adds block `layer`'s delta to `rows` rows of width d starting at `x` (nothing when it has none).
    func apply(layer: Int, to x: UnsafeMutablePointer<Float>, rows: Int, width d: Int) {
        guard layer < deltas.count, !deltas[layer].isEmpty else { return }
        deltas[layer].withUnsafeBufferPointer { dp in
            for r in 0..<rows { ForwardOps.addRow(x + r * d, dp.baseAddress!, d) }
        }
    }
}
