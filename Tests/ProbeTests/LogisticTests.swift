import Foundation
import Probe
import Testing

/// `--recipe logistic` against scikit-learn (Tests/fixtures/probe/make_logistic_fixtures.py).
@Suite struct LogisticTests {
    struct Reference: Decodable {
        let rows: Int, features: Int, classes: Int
        let x: [Double], y: [Int], train: [Int], val: [Int]
        let c: Double, coef: [Double], intercept: [Double], val_accuracy: Double
        let grid: [Double], folds: [[Int]], cv_mean_accuracy: [Double], best_c: Double
    }
    static let ref: Reference = try! JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: ProbeFixtures.path("logistic.json"))))

    static func rows(_ idx: [Int]) -> [Double] {
        let d = ref.features
        return idx.flatMap { ref.x[($0 * d)..<($0 * d + d)] }
    }

    @Test("LogisticRegression(C=0.5) on standardized features: scikit-learn's coefficients, intercepts and validation accuracy")
    func fixedC() {
        let r = Self.ref, d = r.features, k = r.classes
        var xt = Self.rows(r.train), xv = Self.rows(r.val)
        let st = LogisticRecipe.Standardizer(xt, rows: r.train.count, cols: d)
        st.apply(&xt, rows: r.train.count); st.apply(&xv, rows: r.val.count)
        let fit = LogisticRecipe.fit(xt, labels: r.train.map { r.y[$0] }, rows: r.train.count, cols: d, classes: k, c: r.c)
        #expect(fit.converged, "gradient \(fit.gradientMax) after \(fit.iterations) iterations")
        let scale = r.coef.reduce(0) { max($0, abs($1)) }
        let worst = zip(fit.weight, r.coef).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worst < 1e-5 * scale, "max |Δcoef| \(worst) (coefficients up to \(scale))")
        let worstB = zip(fit.bias, r.intercept).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worstB < 1e-5, "max |Δintercept| \(worstB)")
        let pred = LogisticRecipe.predict(xv, rows: r.val.count, cols: d, weight: fit.weight, bias: fit.bias, classes: k)
        let acc = Double(zip(pred, r.val.map { r.y[$0] }).filter { $0 == $1 }.count) / Double(r.val.count)
        #expect(acc == r.val_accuracy)

        // Folded into raw-feature weights, the probe gives the same scores on unstandardized rows.
        let folded = st.fold(weight: fit.weight, bias: fit.bias, classes: k)
        let raw = Self.rows(r.val)
        #expect(LogisticRecipe.predict(raw, rows: r.val.count, cols: d, weight: folded.weight, bias: folded.bias, classes: k) == pred)
    }

    @Test("the strength chosen by 5-fold CV on the training rows is GridSearchCV(StandardScaler + LogisticRegression)'s")
    func chosenC() {
        let r = Self.ref, d = r.features
        let xt = Self.rows(r.train)
        let (c, accuracies) = LogisticRecipe.chooseC(xt, labels: r.train.map { r.y[$0] }, rows: r.train.count, cols: d,
                                                     classes: r.classes, folds: r.folds, grid: r.grid)
        #expect(zip(LogisticRecipe.defaultGrid, r.grid).allSatisfy { abs($0 - $1) <= 1e-12 * $1 }, "the grid is LogisticRegressionCV's")
        #expect(c == r.best_c, "chose C \(c), scikit-learn \(r.best_c)")
        let worst = zip(accuracies, r.cv_mean_accuracy).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worst <= 1.0 / 48 / 5 + 1e-12, "mean CV accuracies differ by \(worst) (at most one validation row of one fold allowed)")
    }
}
