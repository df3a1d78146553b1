import Foundation
import Quant

/// `train --recipe logistic`: the probe a careful researcher fits — features standardized on the training
/// rows, multinomial logistic regression with an L2 penalty on the weights (not the intercept), optimised
/// full-batch with L-BFGS in float64 to convergence, deterministic. The objective is scikit-learn's
/// `LogisticRegression(C=…)`: C·Σᵢ −log softmax(W xᵢ + b)[yᵢ] + ½‖W‖², minimised here divided by C·n (same
/// minimiser). It is strictly convex, so a converged fit has scikit-learn's coefficients.
public enum LogisticRecipe {
    /// scikit-learn's `LogisticRegressionCV` default grid: 10 values of C from 1e-4 to 1e4, logarithmic.
    public static let defaultGrid: [Double] = (0..<10).map { Foundation.pow(10, -4 + 8 * Double($0) / 9) }

    /// Per-feature mean and scale on the training rows (StandardScaler: population standard deviation,
    /// a constant feature gets scale 1).
    public struct Standardizer: Sendable, Equatable {
        public var mean: [Double]
        public var scale: [Double]

        public init(_ x: [Double], rows n: Int, cols d: Int) {
            var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
            for i in 0..<n { for j in 0..<d { mean[j] += x[i * d + j] } }
            for j in 0..<d { mean[j] /= Double(max(n, 1)) }
            for i in 0..<n { for j in 0..<d { let c = x[i * d + j] - mean[j]; sq[j] += c * c } }
            self.mean = mean
            scale = sq.map { v in let s = (v / Double(max(n, 1))).squareRoot(); return s > 0 ? s : 1 }
        }

        public func apply(_ x: inout [Double], rows n: Int) {
            let d = mean.count
            for i in 0..<n { for j in 0..<d { x[i * d + j] = (x[i * d + j] - mean[j]) / scale[j] } }
        }

        /// Weights for raw features: W' = W / scale, b' = b − W'·mean (what `predict` and PyTorch apply).
        public func fold(weight w: [Double], bias b: [Double], classes: Int) -> (weight: [Double], bias: [Double]) {
            let d = mean.count
            var w2 = w, b2 = b
            for k in 0..<classes {
                var shift = 0.0
                for j in 0..<d { w2[k * d + j] = w[k * d + j] / scale[j]; shift += w2[k * d + j] * mean[j] }
                b2[k] -= shift
            }
            return (w2, b2)
        }
    }

    public struct Fit: Sendable {
        public var weight: [Double]   // [classes, d]
        public var bias: [Double]     // [classes]
        public var iterations: Int
        public var converged: Bool
        /// The final objective (divided by C·n) and the largest gradient component.
        public var objective: Double
        public var gradientMax: Double
    }

    /// Fits multinomial logistic regression with inverse penalty strength `c` on rows `x` [n, d] (already
    /// standardized) with labels `y` in 0..<classes. `start` warm-starts (e.g. the previous C of a grid).
    public static func fit(_ x: [Double], labels y: [Int], rows n: Int, cols d: Int, classes k: Int, c: Double,
                           start: (weight: [Double], bias: [Double])? = nil, tolerance: Double = 1e-7,
                           maxIterations: Int = 5000) -> Fit {
        let p = k * d + k
        var theta = [Double](repeating: 0, count: p)
        if let s = start, s.weight.count == k * d, s.bias.count == k {
            theta.replaceSubrange(0..<(k * d), with: s.weight); theta.replaceSubrange((k * d)..<p, with: s.bias)
        }
        var z = [Double](repeating: 0, count: n * k)
        let invN = 1 / Double(max(n, 1)), reg = 1 / (c * Double(max(n, 1)))
        // f = mean cross-entropy + ‖W‖²/(2·C·n); g = ∂f/∂θ.
        func evaluate(_ t: [Double], _ g: inout [Double]) -> Double {
            t.withUnsafeBufferPointer { tp in
                x.withUnsafeBufferPointer { xp in
                    z.withUnsafeMutableBufferPointer { zp in
                        BLAS.dgemm(transB: true, m: n, n: k, k: d, xp.baseAddress!, lda: d, tp.baseAddress!, ldb: d, zp.baseAddress!, ldc: k)
                    }
                }
            }
            var loss = 0.0
            for i in 0..<n {
                var m = -Double.infinity
                for j in 0..<k { z[i * k + j] += t[k * d + j]; m = max(m, z[i * k + j]) }
                var s = 0.0
                for j in 0..<k { s += Foundation.exp(z[i * k + j] - m) }
                let logS = m + Foundation.log(s)
                loss -= z[i * k + y[i]] - logS
                for j in 0..<k { z[i * k + j] = (Foundation.exp(z[i * k + j] - logS) - (j == y[i] ? 1 : 0)) * invN }   // (P − Y)/n
            }
            var penalty = 0.0
            for j in 0..<(k * d) { penalty += t[j] * t[j] }
            z.withUnsafeBufferPointer { rp in
                x.withUnsafeBufferPointer { xp in
                    g.withUnsafeMutableBufferPointer { gp in
                        BLAS.dgemm(transA: true, m: k, n: d, k: n, rp.baseAddress!, lda: k, xp.baseAddress!, ldb: d, gp.baseAddress!, ldc: d)
                    }
                }
            }
            for j in 0..<(k * d) { g[j] += reg * t[j] }
            for j in 0..<k {
                var s = 0.0
                for i in 0..<n { s += z[i * k + j] }
                g[k * d + j] = s
            }
            return loss * invN + 0.5 * reg * penalty
        }

        // L-BFGS (10 pairs) with a backtracking Armijo line search; a pair is kept only when sᵀy > 0.
        var g = [Double](repeating: 0, count: p), gNew = g
        var f = evaluate(theta, &g)
        var sList: [[Double]] = [], yList: [[Double]] = [], rhoList: [Double] = []
        var iteration = 0
        func maxAbs(_ v: [Double]) -> Double { v.reduce(0) { max($0, abs($1)) } }
        while iteration < maxIterations && maxAbs(g) > tolerance {
            iteration += 1
            // Two-loop recursion: direction = −H·g.
            var q = g
            var alphas = [Double](repeating: 0, count: sList.count)
            for i in stride(from: sList.count - 1, through: 0, by: -1) {
                var a = 0.0
                for j in 0..<p { a += sList[i][j] * q[j] }
                a *= rhoList[i]; alphas[i] = a
                for j in 0..<p { q[j] -= a * yList[i][j] }
            }
            if let s = sList.last, let yy = yList.last {
                var sy = 0.0, yy2 = 0.0
                for j in 0..<p { sy += s[j] * yy[j]; yy2 += yy[j] * yy[j] }
                let gamma = sy / yy2
                for j in 0..<p { q[j] *= gamma }
            } else {
                let scale = 1 / max(maxAbs(g), 1e-12)
                for j in 0..<p { q[j] *= min(1, scale) }
            }
            for i in 0..<sList.count {
                var b = 0.0
                for j in 0..<p { b += yList[i][j] * q[j] }
                b *= rhoList[i]
                for j in 0..<p { q[j] += sList[i][j] * (alphas[i] - b) }
            }
            var slope = 0.0
            for j in 0..<p { slope -= g[j] * q[j] }
            if slope >= 0 {   // not a descent direction: restart from the gradient
                sList.removeAll(); yList.removeAll(); rhoList.removeAll()
                q = g; slope = 0
                for j in 0..<p { slope -= g[j] * g[j] }
            }
            var step = 1.0, accepted = false
            var candidate = theta, fNew = f
            for _ in 0..<60 {
                for j in 0..<p { candidate[j] = theta[j] - step * q[j] }
                fNew = evaluate(candidate, &gNew)
                if fNew <= f + 1e-4 * step * slope { accepted = true; break }
                step *= 0.5
            }
            if !accepted { break }
            var s = [Double](repeating: 0, count: p), yv = s
            var sy = 0.0
            for j in 0..<p { s[j] = candidate[j] - theta[j]; yv[j] = gNew[j] - g[j]; sy += s[j] * yv[j] }
            if sy > 1e-16 {
                sList.append(s); yList.append(yv); rhoList.append(1 / sy)
                if sList.count > 10 { sList.removeFirst(); yList.removeFirst(); rhoList.removeFirst() }
            }
            let fOld = f
            theta = candidate; f = fNew; g = gNew
            if abs(fOld - f) <= 1e-16 * max(1, abs(f)) && maxAbs(g) <= tolerance * 100 { break }
        }
        return Fit(weight: Array(theta[0..<(k * d)]), bias: Array(theta[(k * d)...]), iterations: iteration,
                   converged: maxAbs(g) <= tolerance, objective: f, gradientMax: maxAbs(g))
    }

    /// Predicted classes of rows `x` [n, d] (argmax of W x + b; ties: the lowest class).
    public static func predict(_ x: [Double], rows n: Int, cols d: Int, weight w: [Double], bias b: [Double], classes k: Int) -> [Int] {
        (0..<n).map { i in
            var best = 0, bestZ = -Double.infinity
            for j in 0..<k {
                var s = b[j]
                for t in 0..<d { s += w[j * d + t] * x[i * d + t] }
                if s > bestZ { bestZ = s; best = j }
            }
            return best
        }
    }

    /// The C with the best mean validation accuracy over `folds` (lists of validation indices into the rows;
    /// every fold standardized on its own training rows, as a Pipeline(StandardScaler, LogisticRegression) in
    /// scikit-learn's cross-validation), ties to the smaller C; the grid is walked from small to large C with
    /// warm starts. Returns the chosen C and the mean accuracy of each grid value.
    public static func chooseC(_ x: [Double], labels y: [Int], rows n: Int, cols d: Int, classes k: Int,
                               folds: [[Int]], grid: [Double] = defaultGrid) -> (c: Double, accuracies: [Double]) {
        var sums = [Double](repeating: 0, count: grid.count)
        for f in folds {
            let valSet = Set(f)
            let tr = (0..<n).filter { !valSet.contains($0) }
            var xt = [Double](), xv = [Double]()
            xt.reserveCapacity(tr.count * d); xv.reserveCapacity(f.count * d)
            for i in tr { xt.append(contentsOf: x[(i * d)..<(i * d + d)]) }
            for i in f { xv.append(contentsOf: x[(i * d)..<(i * d + d)]) }
            let st = Standardizer(xt, rows: tr.count, cols: d)
            st.apply(&xt, rows: tr.count); st.apply(&xv, rows: f.count)
            let yt = tr.map { y[$0] }, yv = f.map { y[$0] }
            var start: (weight: [Double], bias: [Double])?
            for (gi, c) in grid.enumerated() {
                let fit = fit(xt, labels: yt, rows: tr.count, cols: d, classes: k, c: c, start: start, tolerance: 1e-6)
                start = (fit.weight, fit.bias)
                let pred = predict(xv, rows: f.count, cols: d, weight: fit.weight, bias: fit.bias, classes: k)
                sums[gi] += Double(zip(pred, yv).filter { $0 == $1 }.count) / Double(max(f.count, 1))
            }
        }
        let acc = sums.map { $0 / Double(max(folds.count, 1)) }
        var best = 0
        for i in acc.indices where acc[i] > acc[best] { best = i }
        return (grid[best], acc)
    }
}
