import ArgumentParser
import Extraction
import Foundation
import Formats
import Model
import Probe

/// `--steer-…`: interventions at the write point (the output of block L, TransformerLens
/// `blocks.L.hook_resid_post`), shared by generate and residuals.
struct SteerOptions: ParsableArguments {
    @Option(name: .customLong("steer-vector"), help: ArgumentHelp("A direction to add: a safetensors file holding one vector of the model's hidden size, or FILE:KEY to pick tensor KEY. Repeatable.", valueName: "file[:key]"))
    var vectors: [String] = []

    @Option(name: .customLong("steer-probes"), help: ArgumentHelp("A `llamaprobe train` output directory: --steer-class takes its direction from these probes.", valueName: "dir"))
    var probes: String?

    @Option(name: .customLong("steer-class"), help: ArgumentHelp("Steer along the weight row of this class of the --steer-probes probe at --steer-layer (default: the probes' best layer). Repeatable.", valueName: "name"))
    var classes: [String] = []

    @Option(name: .customLong("steer-layer"), help: ArgumentHelp("Block whose output is steered (0-based, resid_post of block L): one per intervention in the order --steer-vector…, --steer-class…, or one for all.", valueName: "L"))
    var layers: [Int] = []

    @Option(name: .customLong("steer-strength"), help: ArgumentHelp("Strength A: A·v/‖v‖ is added at every position. One per intervention (same order as --steer-layer), or one for all.", valueName: "A"))
    var strengths: [Float] = []

    var sources: Int { vectors.count + classes.count }

    func validate() throws {
        if sources == 0 {
            if !layers.isEmpty || !strengths.isEmpty || probes != nil {
                throw ValidationError("--steer-layer, --steer-strength and --steer-probes need a --steer-vector or --steer-class")
            }
            return
        }
        if !classes.isEmpty && probes == nil { throw ValidationError("--steer-class needs --steer-probes DIR (the trained probes)") }
        if probes != nil && classes.isEmpty { throw ValidationError("--steer-probes needs --steer-class NAME (which class to steer toward)") }
        guard strengths.count == 1 || strengths.count == sources else {
            throw ValidationError("--steer-strength: give one per intervention (\(sources)) or one for all; got \(strengths.count)")
        }
        if layers.isEmpty && !vectors.isEmpty { throw ValidationError("--steer-vector needs --steer-layer L (the block whose output is steered)") }
        guard layers.count <= 1 || layers.count == sources else {
            throw ValidationError("--steer-layer: give one per intervention (\(sources)), one for all, or none for probe classes (best layer); got \(layers.count)")
        }
        if let bad = layers.first(where: { $0 < 0 }) { throw ValidationError("--steer-layer \(bad) is not a block number (0, 1, …)") }
        if let bad = strengths.first(where: { !$0.isFinite }) { throw ValidationError("--steer-strength \(bad) is not a finite number") }
    }

    /// The interventions, validated against the model (nothing when no --steer flag was given).
    func steering(for m: LoadedModel) throws -> Steering {
        try Steering(try interventions(config: m.config), config: m.config)
    }

    /// The interventions as given (validated against a model by `Steering`); `config` also checks the probes.
    func interventions(config: LlamaConfig?) throws -> [Intervention] {
        guard sources > 0 else { return [] }
        func layer(_ i: Int) -> Int? { layers.isEmpty ? nil : layers[layers.count == 1 ? 0 : i] }
        func strength(_ i: Int) -> Float { strengths[strengths.count == 1 ? 0 : i] }
        var list: [Intervention] = []
        for (i, spec) in vectors.enumerated() {
            let (v, source) = try Self.readVector(spec)
            list.append(Intervention(layer: layer(i)!, vector: v, strength: strength(i), source: source))
        }
        if let probes {
            let directions = try Self.probeDirections(directory: probes, classes: classes, layers: classes.indices.map { layer(vectors.count + $0) },
                                                      config: config)
            for (j, d) in directions.enumerated() {
                list.append(Intervention(layer: d.layer, vector: d.vector, strength: strength(vectors.count + j), source: d.source))
            }
        }
        return list
    }

    /// `FILE[:KEY]`: the named tensor, or the file's only tensor; shape [d] or [1, d], a float dtype.
    static func readVector(_ spec: String) throws -> (vector: [Float], source: String) {
        var path = spec, key: String?
        if !FileManager.default.fileExists(atPath: spec), let colon = spec.lastIndex(of: ":") {
            path = String(spec[..<colon]); key = String(spec[spec.index(after: colon)...])
        }
        let f = try SafeTensorsFile(path: path)
        let name: String
        if let key {
            guard f.tensors[key] != nil else {
                throw CLIError("--steer-vector \(spec): \(path) has no tensor '\(key)' (it has: \(f.names.prefix(10).joined(separator: ", "))\(f.names.count > 10 ? ", …" : ""))")
            }
            name = key
        } else {
            guard f.names.count == 1 else {
                throw CLIError("--steer-vector \(spec): \(path) holds \(f.names.count) tensors; name one as \(path):KEY (e.g. \(f.names.prefix(3).joined(separator: ", ")))")
            }
            name = f.names[0]
        }
        let info = try f.info(name)
        guard info.shape.count == 1 || (info.shape.count == 2 && info.shape[0] == 1) else {
            throw CLIError("--steer-vector \(spec): tensor '\(name)' has shape \(info.shape); a steering vector is [d] or [1, d]")
        }
        return (try f.floats(name), "\(path):\(name)")
    }

    /// The weight rows of `classes` in the probes of `directory`, at the given blocks (nil: the best layer).
    /// The one place generate/residuals read trained probes (ProbeSet, Extraction).
    static func probeDirections(directory: String, classes: [String], layers: [Int?], config: LlamaConfig?) throws
        -> [(layer: Int, vector: [Float], source: String)] {
        let set = try ProbeSet.load(directory: directory)
        if let config { try set.check(against: config) }
        // Probe layer indices follow hidden_states (0 = embeddings) when the probes read the embeddings.
        let shift = set.withEmbeddings ? 1 : 0
        return try zip(classes, layers).map { name, block in
            guard let k = set.labels.firstIndex(of: name) else {
                throw CLIError("--steer-class \(name): not one of the probes' classes in \(directory) (\(set.labels.joined(separator: ", ")))")
            }
            let b: Int
            if let block { b = block } else {
                guard let best = set.bestLayer else {
                    throw CLIError("--steer-class \(name): the probes in \(directory) record no best layer; pass --steer-layer L")
                }
                guard best - shift >= 0 else {
                    throw CLIError("--steer-class \(name): the probes' best layer is the embedding output, which has no block to steer; pass --steer-layer L")
                }
                b = best - shift
            }
            guard let probe = set.probes[b + shift] else {
                throw CLIError("--steer-class \(name): the probes in \(directory) have no probe for block \(b) (probe layers: \(set.probes.keys.sorted().map { String($0 - shift) }.joined(separator: ", ")))")
            }
            let d = set.dModel
            return (b, Array(probe.weight[(k * d)..<((k + 1) * d)]), "\(directory) class \(name) (probe of block \(b))")
        }
    }
}
