import Foundation
import Probe
import Testing

/// numpy's RandomState and scikit-learn's stratified split, against Tests/fixtures/probe/splits.json.
@Suite struct SplitTests {
    @Test("RandomState(12345) draws and permutation match numpy")
    func randomState() throws {
        let j = try ProbeFixtures.json("splits.json")
        var rng = NumpyRandomState(seed: 12345)
        // randint(0, 2**32, dtype=uint64) draws 32 bits per value (mask 0xffffffff, never rejected).
        let draws = (0..<8).map { _ in Int(rng.interval(0xFFFF_FFFF)) }
        #expect(draws == j["randomstate_12345_randint_2_32"] as! [Int])
        var p = NumpyRandomState(seed: 12345)
        #expect(p.permutation(50) == j["randomstate_12345_permutation_50"] as! [Int])
    }

    @Test("train_test_split(range(N), test_size=0.2, stratify=labels, random_state=12345), index for index")
    func sklearnSplits() throws {
        let cases = try ProbeFixtures.json("splits.json")["cases"] as! [[String: Any]]
        #expect(cases.count >= 10)
        for c in cases {
            let labels = c["labels"] as! [Int]
            let (train, test) = try StratifiedSplit.trainTestSplit(labels: labels, testFraction: 0.2, seed: 12345)
            #expect(train == c["train"] as! [Int], "N=\(labels.count): train differs")
            #expect(test == c["val"] as! [Int], "N=\(labels.count): validation differs")
        }
    }

    @Test("a class with fewer than 2 rows is refused, naming it")
    func tooFew() throws {
        let e = #expect(throws: SplitError.self) {
            _ = try StratifiedSplit.trainTestSplit(labels: [0, 0, 0, 1, 1, 1, 2, 0, 1, 0], labelNames: ["happy", "sad", "neutral"])
        }
        #expect(e?.reason.contains("'neutral' (id 2): 1 row") == true, "\(e?.reason ?? "")")
        #expect(throws: SplitError.self) { _ = try StratifiedSplit.trainTestSplit(labels: [0, 0, 1, 1, 2, 2, 3, 3]) }
    }

    @Test("split.json round trip")
    func splitFile() throws {
        let dir = scratchDirectory()
        let s = SplitFile(train: [3, 1, 2], val: [0, 4])
        try s.json.write(toFile: dir + "/split.json", atomically: true, encoding: .utf8)
        #expect(try SplitFile.read(path: dir + "/split.json") == s)
        try "{\"train\": [1]}".write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        #expect(throws: SplitError.self) { _ = try SplitFile.read(path: dir + "/bad.json") }
    }
}

@Suite struct OptimizerTests {
    @Test("ReduceLROnPlateau: relative threshold, patience 0, factor, eps")
    func plateau() {
        var s = PlateauScheduler(factor: 0.75, patience: 0)
        var lr = 1e-3
        lr = s.step(1.0, lr: lr); #expect(lr == 1e-3)              // first value improves on inf
        lr = s.step(0.99995, lr: lr); #expect(lr == 1e-3 * 0.75)    // not better than 1·(1 − 1e-4)
        lr = s.step(0.9, lr: lr); #expect(lr == 1e-3 * 0.75)
        var tiny = PlateauScheduler(factor: 0.75, patience: 0)
        _ = tiny.step(1, lr: 1e-8)
        #expect(tiny.step(2, lr: 1e-8) == 1e-8)                    // the reduction would be below eps
        var patient = PlateauScheduler(factor: 0.5, patience: 2)
        var l = 1.0
        for v in [1.0, 1.0, 1.0] { l = patient.step(v, lr: l) }
        #expect(l == 1.0)
        l = patient.step(1.0, lr: l)
        #expect(l == 0.5)
    }

    @Test("our RNG: deterministic, uniform below n, N(0, 0.02) init")
    func rng() {
        var a = ProbeRNG(seed: 12345, stream: 0), b = ProbeRNG(seed: 12345, stream: 0), c = ProbeRNG(seed: 12345, stream: 1)
        let xa = (0..<5).map { _ in a.next() }
        #expect(xa == (0..<5).map { _ in b.next() })
        #expect(xa != (0..<5).map { _ in c.next() })
        var counts = [Int](repeating: 0, count: 7)
        for _ in 0..<70_000 { counts[a.below(7)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 500 })
        let (w, bias) = ProbeTrainer.initialProbe(seed: 12345, layer: 3, classes: 7, dModel: 1000)
        let mean = w.reduce(0, +) / Float(w.count)
        let sd = (w.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(w.count)).squareRoot()
        #expect(abs(mean) < 0.001 && abs(sd - 0.02) < 0.001 && bias.allSatisfy { $0 == 0 })
        #expect(ProbeTrainer.initialProbe(seed: 12345, layer: 3, classes: 7, dModel: 1000).weight == w)
        #expect(ProbeTrainer.initialProbe(seed: 12345, layer: 4, classes: 7, dModel: 1000).weight != w)
    }
}
