import Foundation
import Quant
import Formats

/// numpy's legacy `np.random.RandomState(seed)` for an integer seed: MT19937 seeded with `init_genrand`,
/// 32-bit outputs, and the bounded integers and shuffle of numpy's `mtrand` (`random_interval`, the
/// Fisher–Yates loop of `RandomState.shuffle`). Reproduces `RandomState(s).permutation(n)` exactly.
public struct NumpyRandomState: Sendable {
    private var mt = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt32) {
        mt[0] = seed
        for i in 1..<624 {
            mt[i] = 1_812_433_253 &* (mt[i - 1] ^ (mt[i - 1] >> 30)) &+ UInt32(i)
        }
    }

    /// The next 32-bit output of MT19937 (`genrand_int32`).
    public mutating func nextUInt32() -> UInt32 {
        if index >= 624 { twist() }
        var y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for k in 0..<624 {
            let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % 624] & 0x7FFF_FFFF)
            mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908_B0DF : 0)
        }
        index = 0
    }

    /// numpy's `random_interval(max)`: a uniform integer in 0...max by masked rejection sampling
    /// (32-bit draws while max fits in 32 bits, as numpy does).
    public mutating func interval(_ max: UInt64) -> UInt64 {
        if max == 0 { return 0 }
        var mask = max
        mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4
        mask |= mask >> 8; mask |= mask >> 16; mask |= mask >> 32
        if max <= 0xFFFF_FFFF {
            while true {
                let v = UInt64(nextUInt32()) & mask
                if v <= max { return v }
            }
        }
        while true {
            let v = ((UInt64(nextUInt32()) << 32) | UInt64(nextUInt32())) & mask
            if v <= max { return v }
        }
    }

    /// `RandomState.shuffle` of a 1-d array: for i from n−1 down to 1, swap a[i] with a[interval(i)].
    public mutating func shuffle<T>(_ a: inout [T]) {
        var i = a.count - 1
        while i >= 1 {
            let j = Int(interval(UInt64(i)))
            a.swapAt(i, j)
            i -= 1
        }
    }

    /// `RandomState.permutation(n)`.
    public mutating func permutation(_ n: Int) -> [Int] {
        var a = Array(0..<n)
        shuffle(&a)
        return a
    }

    /// `RandomState.permutation(array)` (a shuffled copy).
    public mutating func permutation<T>(_ values: [T]) -> [T] {
        var a = values
        shuffle(&a)
        return a
    }
}

public struct SplitError: LocalizedError, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var errorDescription: String? { reason }
}

/// scikit-learn's stratified split, index for index: `train_test_split(range(N), test_size=f,
/// stratify=labels, random_state=seed)`, i.e. one split of `StratifiedShuffleSplit` with
/// n_test = ceil(f·N), n_train = N − n_test.
public enum StratifiedSplit {
    /// Positions 0..<labels.count split into (train, test), in the order scikit-learn returns them.
    /// `labelNames` only words the errors.
    public static func trainTestSplit(labels: [Int], testFraction: Double = 0.2, seed: UInt32 = 12345,
                                      labelNames: [String]? = nil) throws -> (train: [Int], test: [Int]) {
        let n = labels.count
        guard testFraction > 0, testFraction < 1 else {
            throw SplitError("the validation fraction must be in (0, 1), got \(testFraction)")
        }
        let nTest = Int((testFraction * Double(n)).rounded(.up))
        let nTrain = n - nTest
        guard nTest > 0, nTrain > 0 else {
            throw SplitError("\(n) rows cannot be split with a validation fraction of \(testFraction) (train \(nTrain), validation \(nTest))")
        }
        // np.unique(y, return_inverse=True): classes sorted by value.
        let classes = Array(Set(labels)).sorted()
        let classIndex = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, $0) })
        var counts = [Int](repeating: 0, count: classes.count)
        // argsort(y_indices, kind="stable") split per class: each class's positions in ascending order.
        var members = [[Int]](repeating: [], count: classes.count)
        for (p, l) in labels.enumerated() {
            let c = classIndex[l]!
            counts[c] += 1
            members[c].append(p)
        }
        let name = { (l: Int) -> String in
            if let names = labelNames, l >= 0, l < names.count { return "'\(names[l])' (id \(l))" }
            return "\(l)"
        }
        let tooFew = classes.indices.filter { counts[$0] < 2 }
        if !tooFew.isEmpty {
            let list = tooFew.map { "\(name(classes[$0])): \(counts[$0]) row" }.joined(separator: ", ")
            throw SplitError("every class needs at least 2 rows for a stratified split (as scikit-learn requires); too few: \(list)")
        }
        if nTrain < classes.count {
            throw SplitError("the training set of \(nTrain) rows is smaller than the \(classes.count) classes")
        }
        if nTest < classes.count {
            throw SplitError("the validation set of \(nTest) rows (\(testFraction) of \(n)) is smaller than the \(classes.count) classes; add rows or raise --val-fraction")
        }
        var rng = NumpyRandomState(seed: seed)
        let nI = approximateMode(counts, draws: nTrain, rng: &rng)
        let remaining = zip(counts, nI).map { $0 - $1 }
        let tI = approximateMode(remaining, draws: nTest, rng: &rng)
        var train: [Int] = [], test: [Int] = []
        train.reserveCapacity(nTrain); test.reserveCapacity(nTest)
        for c in classes.indices {
            let perm = rng.permutation(counts[c])
            let shuffled = perm.map { members[c][$0] }
            train += shuffled[0..<nI[c]]
            test += shuffled[nI[c]..<(nI[c] + tI[c])]
        }
        return (rng.permutation(train), rng.permutation(test))
    }

    /// sklearn.utils.extmath._approximate_mode: floor of the proportional allocation, then one more for
    /// the largest remainders, ties broken with `rng.choice(inds, size, replace=False)` (legacy:
    /// `permutation(len(inds))[:size]`).
    static func approximateMode(_ counts: [Int], draws: Int, rng: inout NumpyRandomState) -> [Int] {
        let total = Double(counts.reduce(0, +))
        let continuous = counts.map { Double($0) / total * Double(draws) }
        var floored = continuous.map { $0.rounded(.down) }
        var need = Int(Double(draws) - floored.reduce(0, +))
        if need > 0 {
            let remainder = zip(continuous, floored).map { $0 - $1 }
            for value in Array(Set(remainder)).sorted(by: >) {
                let inds = remainder.indices.filter { remainder[$0] == value }
                let add = min(inds.count, need)
                let chosen = rng.permutation(inds.count).prefix(add).map { inds[$0] }
                for i in chosen { floored[i] += 1 }
                need -= add
                if need == 0 { break }
            }
        }
        return floored.map { Int($0) }
    }
}

/// scikit-learn's `StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)`, fold for fold.
public enum StratifiedKFold {
    /// The k validation sets (positions 0..<labels.count, each list ascending as `split` yields them).
    /// Classes are numbered by first appearance; per class the fold numbers 0..<k are repeated by the
    /// round-robin allocation over the sorted encoded labels and shuffled with one RandomState(seed)
    /// (`rng.shuffle(folds_for_class)`), the classes in order of first appearance.
    public static func folds(labels: [Int], k: Int, seed: UInt32 = 12345, labelNames: [String]? = nil,
                             warn: (String) -> Void = { _ in }) throws -> [[Int]] {
        let n = labels.count
        guard k >= 2 else { throw SplitError("--cv needs at least 2 folds, got \(k)") }
        guard k <= n else { throw SplitError("--cv \(k) folds of \(n) rows: every fold needs at least one row") }
        var encoded = [Int](repeating: 0, count: n)
        var classOf = [Int: Int](), firstLabel: [Int] = []
        for (p, l) in labels.enumerated() {
            if let c = classOf[l] { encoded[p] = c } else {
                classOf[l] = firstLabel.count; encoded[p] = firstLabel.count; firstLabel.append(l)
            }
        }
        let classes = firstLabel.count
        var counts = [Int](repeating: 0, count: classes)
        for c in encoded { counts[c] += 1 }
        if counts.allSatisfy({ $0 < k }) {
            throw SplitError("--cv \(k) is more than the rows of every class (at most \(counts.max() ?? 0)); lower --cv")
        }
        let name = { (l: Int) -> String in
            if let names = labelNames, l >= 0, l < names.count { return "'\(names[l])'" }
            return "\(l)"
        }
        let small = counts.indices.filter { counts[$0] < k }
        if !small.isEmpty {
            warn("--cv \(k): " + small.map { "class \(name(firstLabel[$0])) has \(counts[$0]) rows" }.joined(separator: ", ")
                 + ", fewer than the folds: some folds validate none of it")
        }
        // allocation[i][c]: rows of class c in fold i = bincount(sorted(encoded)[i::k]).
        var allocation = [[Int]](repeating: [Int](repeating: 0, count: classes), count: k)
        var start = 0
        for c in 0..<classes {
            for j in start..<(start + counts[c]) { allocation[j % k][c] += 1 }
            start += counts[c]
        }
        var testFold = [Int](repeating: 0, count: n)
        var rng = NumpyRandomState(seed: seed)
        for c in 0..<classes {
            var foldsForClass: [Int] = []
            for i in 0..<k { foldsForClass += [Int](repeating: i, count: allocation[i][c]) }
            rng.shuffle(&foldsForClass)
            var next = 0
            for p in 0..<n where encoded[p] == c { testFold[p] = foldsForClass[next]; next += 1 }
        }
        var folds = [[Int]](repeating: [], count: k)
        for p in 0..<n { folds[testFold[p]].append(p) }
        return folds
    }
}

/// `split.json`: `{"train": [rows…], "val": [rows…]}` (input-row indices, in scikit-learn's order), and when
/// the run made them `"test": [rows…]` (the held-out set of --test-fraction) and `"folds": [[rows…]…]` (the
/// validation rows of each --cv fold; train and val are then fold 0's).
public struct SplitFile: Codable, Equatable, Sendable {
    public var train: [Int]
    public var val: [Int]
    public var test: [Int]?
    public var folds: [[Int]]?
    public init(train: [Int], val: [Int], test: [Int]? = nil, folds: [[Int]]? = nil) {
        self.train = train; self.val = val; self.test = test; self.folds = folds
    }

    public static func read(path: String) throws -> SplitFile {
        let data: Data
        do { data = try Files.readData(path, limit: 1 << 30) } catch let e as FileError {
            throw SplitError("\(path): cannot read: \(e.reason)")
        }
        do { return try JSONDecoder().decode(SplitFile.self, from: data) } catch {
            throw SplitError("\(path): not a split file ({\"train\": [rows…], \"val\": [rows…]}): \(error.localizedDescription)")
        }
    }

    public var json: String {
        "{\"train\": [" + train.map(String.init).joined(separator: ", ") + "],\n \"val\": ["
            + val.map(String.init).joined(separator: ", ") + "]"
            + (test.map { ",\n \"test\": [" + $0.map(String.init).joined(separator: ", ") + "]" } ?? "")
            + (folds.map { ",\n \"folds\": [" + $0.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" }.joined(separator: ",\n   ") + "]" } ?? "")
            + "}\n"
    }
}
