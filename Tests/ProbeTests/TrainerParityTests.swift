import Foundation
import Probe
import Testing

/// The trainer against the PyTorch recipe run by Tests/fixtures/probe/make_probe_fixtures.py
/// (deterministic mode: the same initial weights and split, batches in the split's train order).
@Suite struct TrainerParityTests {
    struct Worst: CustomStringConvertible {
        var loss = 0.0, weight: Float = 0, accuracy = 0
        var description: String { "loss rel \(loss), weight abs \(weight), accuracy samples \(accuracy)" }
    }

    static func compare(_ name: String) throws -> Worst {
        let tc = try TrainingCase(name)
        let outcomes = try tc.trainer().run()
        var worst = Worst()
        for (l, outcome) in outcomes.enumerated() {
            let ref = tc.reference[l]
            #expect(outcome.epochs.count == ref.count)
            for (mine, theirs) in zip(outcome.epochs, ref) {
                let e = mine.epoch
                let refLoss = theirs["train_loss"] as! Double
                let rel = abs(mine.trainLoss - refLoss) / abs(refLoss)
                worst.loss = max(worst.loss, rel)
                #expect(rel <= 1e-5, "\(name) layer \(l) epoch \(e): loss \(mine.trainLoss) vs \(refLoss)")
                let dc = abs(mine.trainCorrect - (theirs["train_correct"] as! Int))
                worst.accuracy = max(worst.accuracy, dc)
                #expect(dc <= 1, "\(name) layer \(l) epoch \(e): train correct \(mine.trainCorrect) vs \(theirs["train_correct"]!)")
                #expect(mine.trainTotal == theirs["train_total"] as! Int)
                if let va = theirs["val_accuracy"] as? Double {
                    let v = try #require(mine.valAccuracy, "\(name) layer \(l) epoch \(e): not validated")
                    let samples = abs(v - va) * Double(tc.val.count)
                    worst.accuracy = max(worst.accuracy, Int(samples.rounded()))
                    #expect(samples <= 1.001, "\(name) layer \(l) epoch \(e): val accuracy \(v) vs \(va)")
                } else {
                    #expect(mine.valAccuracy == nil, "\(name) layer \(l) epoch \(e): validated but the reference did not")
                }
                let lr = theirs["lr"] as! Double
                #expect(abs(mine.lr - lr) <= 1e-12 * lr, "\(name) layer \(l) epoch \(e): lr \(mine.lr) vs \(lr)")
                #expect(mine.isBest == ((theirs["is_best"] as! Int) == 1), "\(name) layer \(l) epoch \(e): is_best")
                #expect(abs(mine.bestAccuracy - (theirs["best_accuracy"] as! Double)) * Double(tc.val.count) <= 1.001)
            }
            let (w, b) = tc.finalWeights[l]
            let dw = zip(outcome.finalWeight, w).map { abs($0 - $1) }.max()!
            let db = zip(outcome.finalBias, b).map { abs($0 - $1) }.max()!
            worst.weight = max(worst.weight, dw, db)
            #expect(dw <= 1e-4 && db <= 1e-4, "\(name) layer \(l): final weights differ by \(dw), bias by \(db)")
        }
        print("parity \(name): \(worst)")
        return worst
    }

    @Test("a case where ReduceLROnPlateau fires matches PyTorch")
    func scheduler() throws { _ = try Self.compare("scheduler") }

    @Test("large activations with saturated sigmoids match PyTorch")
    func saturate() throws { _ = try Self.compare("saturate") }

    @Test("--no-bias-decay and --plateau-on val match PyTorch")
    func variants() throws { _ = try Self.compare("variants") }

    @Test("results do not depend on the thread count")
    func threadIndependence() throws {
        let tc = try TrainingCase("scheduler")
        let a = try tc.trainer(threads: 1).run(), b = try tc.trainer(threads: 2).run()
        for (x, y) in zip(a, b) {
            #expect(x.finalWeight == y.finalWeight && x.epochs == y.epochs)
        }
    }
}
