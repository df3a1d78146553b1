import Foundation
import Quant
import Formats

/// Errors of the trainer that are not about one shard (ShardError names the shard).
public struct TrainError: LocalizedError, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var errorDescription: String? { reason }
}

/// One batch handed to the kernels: a pointer to each row's kept layers ([layers, dModel] in the
/// storage type) and its label.
public struct BatchView {
    public var rows: [UnsafeRawPointer]
    public var labels: [Int32]
    /// Each row's position (for routing a shared batch to several runs).
    public var positions: [Int]
    public var count: Int { labels.count }
}

/// Where the activations come from during training. Positions are 0..<count in increasing `row` order.
public protocol ActivationSource: AnyObject {
    var type: ActivationType { get }
    /// Layers kept per row, in the order of the probes.
    var layerCount: Int { get }
    var dModel: Int { get }
    /// Training batches of one epoch over `positions` (in that order for resident data).
    func forEachBatch(positions: [Int], batchSize: Int, shuffle: inout ProbeRNG?, _ body: (BatchView) throws -> Void) throws
}

/// Activations decoded once and kept in memory (in the shards' storage type), one slot per row.
public final class ResidentActivations: ActivationSource, @unchecked Sendable {
    public let type: ActivationType
    public let layerCount: Int
    public let dModel: Int
    public let count: Int
    public let rowBytes: Int
    let base: UnsafeMutableRawPointer
    private let mapped: Bool
    /// Slot of each position.
    var slotOfPosition: [Int]
    public private(set) var labels: [Int32] = []

    init(type: ActivationType, layerCount: Int, dModel: Int, count: Int) {
        self.type = type; self.layerCount = layerCount; self.dModel = dModel; self.count = count
        rowBytes = layerCount * dModel * type.size
        (base, mapped) = HugeBuffer.allocate(max(1, rowBytes * count))
        slotOfPosition = Array(0..<count)
    }

    /// In-memory data (tests, imports): values [count, layers, dModel] f32, labels in position order.
    public convenience init(values: [Float], layerCount: Int, dModel: Int, labels: [Int]) {
        self.init(type: .f32, layerCount: layerCount, dModel: dModel, count: labels.count)
        precondition(values.count == labels.count * layerCount * dModel)
        values.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        self.labels = labels.map { Int32($0) }
    }

    deinit { HugeBuffer.deallocate(base, max(1, rowBytes * count), mapped: mapped) }

    func slot(_ s: Int) -> UnsafeMutableRawPointer { base + s * rowBytes }

    func setPositions(slotOfPosition: [Int], labels: [Int32]) {
        self.slotOfPosition = slotOfPosition
        self.labels = labels
    }

    public func row(position p: Int) -> UnsafeRawPointer { UnsafeRawPointer(slot(slotOfPosition[p])) }

    public func forEachBatch(positions: [Int], batchSize: Int, shuffle: inout ProbeRNG?, _ body: (BatchView) throws -> Void) throws {
        var order = positions
        if shuffle != nil { shuffle!.shuffle(&order) }
        var start = 0
        while start < order.count {
            let chunk = order[start..<min(start + batchSize, order.count)]
            try body(BatchView(rows: chunk.map { row(position: $0) }, labels: chunk.map { labels[$0] }, positions: Array(chunk)))
            start += batchSize
        }
    }
}

/// A shard file of the training data and the slots its rows take.
struct ShardRef {
    let path: String
    let count: Int
    let firstSlot: Int
    /// Added to the shard's row numbers: rows of different datasets get different numbers (0 for the first).
    var rowOffset: Int64 = 0
}

/// The shard directories given to `train`: their common metadata and every shard file.
public struct ShardInventory {
    public let metadata: ShardMetadata
    /// The type the activations are kept in: the shards' dtype, or F32 when directories differ.
    public let storageType: ActivationType
    let shards: [ShardRef]
    public var totalRows: Int { shards.reduce(0) { $0 + $1.count } }
    public var shardPaths: [String] { shards.map(\.path) }
    /// Manifests of workers that have not finished (their completed shards are used).
    public let unfinished: [String]
    /// The distinct datasets, in the order first given, with the number their rows start at (rows of the
    /// second dataset are numbered after the first dataset's rows_total, and so on: row numbers in split.json).
    public let datasets: [(name: String, firstRow: Int)]
    /// The hook point whose activations are read (one of `metadata.hooks`; `select(hook:)`).
    public private(set) var hook = ReadoutRecipe.defaultHook

    /// Reads `name`'s activations from now on; refused naming the hooks the shards hold when absent.
    public mutating func select(hook name: String) throws {
        guard metadata.hooks.contains(name) else {
            throw TrainError("--hook \(name): the shards hold no '\(name)' activations; available: \(metadata.hooks.joined(separator: ", "))"
                + (ReadoutRecipe.hookNames.contains(name) ? " (extract with --hooks \(name) to store it)" : " ('\(name)' is not a hook point: \(ReadoutRecipe.hookNames.joined(separator: ", ")))"))
        }
        hook = name
    }

    /// What tells datasets apart: the data file's hash recorded by `extract` (or the imported file's).
    /// Directories that record neither count as one dataset (their rows must then be distinct).
    static func datasetKey(_ m: Manifest) -> String {
        if let h = m.config["data_sha256"], !h.isEmpty { return "data:" + h }
        if let h = m.config["source_sha256"], !h.isEmpty { return "import:" + h }
        return "unrecorded"
    }

    public init(directories: [String]) throws {
        guard !directories.isEmpty else { throw TrainError("no shard directory given (--shards DIR)") }
        var meta: ShardMetadata?
        var dtypes = Set<ActivationType>()
        var unfinished: [String] = []
        var first = ""
        var refs: [ShardRef] = []
        var slot = 0
        var keys: [String] = [], names: [String: String] = [:], span: [String: Int] = [:], keyOfRef: [String] = []
        for path in directories {
            let dir = try ShardDirectory(path: path)
            let key = Self.datasetKey(dir.manifests[0])
            if names[key] == nil {
                keys.append(key)
                names[key] = dir.manifests[0].config["data_file"] ?? dir.manifests[0].config["source"] ?? path
            }
            // rows_total, or past the last row present (both bounded by Manifest.validate: at most 2^40)
            let rows = dir.manifests[0].rowsTotal ?? (dir.manifests.flatMap(\.shards).map(\.lastRow).max() ?? -1) + 1
            span[key] = max(span[key] ?? 0, rows)
            if let m = meta {
                if let diff = Self.difference(m, dir.metadata) {
                    throw ShardError(file: path, reason: "its shards do not match \(first): \(diff)")
                }
            } else {
                meta = dir.metadata
                first = path
            }
            dtypes.insert(dir.metadata.dtype)
            for m in dir.manifests {
                if !m.complete { unfinished.append(path + "/" + Manifest.fileName(worker: m.worker)) }
                for r in m.shards {
                    // The data must be there as recorded before its counts size anything (a FIFO or directory
                    // is refused here, without blocking).
                    let file = path + "/" + r.file
                    let size: Int
                    do { let (fd, sz) = try Files.openRegular(file); close(fd); size = sz } catch let e as FileError {
                        throw ShardError(file: file, reason: "cannot read: \(e.reason)")
                    }
                    guard size == r.bytes else {
                        throw ShardError(file: file, reason: "is \(size) bytes but its manifest records \(r.bytes): the file is empty, truncated or replaced (`llamaprobe shards verify` checks every shard)")
                    }
                    refs.append(ShardRef(path: file, count: r.count, firstSlot: slot))
                    keyOfRef.append(key)
                    slot += r.count
                }
            }
        }
        guard slot > 0 else { throw ShardError(file: directories[0], reason: "no completed shards: nothing to train on") }
        var firstRow = [String: Int](), next = 0
        for k in keys {
            firstRow[k] = next
            let (n, o) = next.addingReportingOverflow(span[k] ?? 0)
            guard !o, n <= Manifest.maxRows else { throw TrainError("the datasets have more than \(Manifest.maxRows) rows together") }
            next = n
        }
        for i in refs.indices { refs[i].rowOffset = Int64(firstRow[keyOfRef[i]] ?? 0) }
        datasets = keys.map { (names[$0] ?? $0, firstRow[$0] ?? 0) }
        metadata = meta!
        shards = refs
        self.unfinished = unfinished
        storageType = dtypes.count == 1 ? metadata.dtype : .f32
    }

    /// What makes two shard sets untrainable together (dtype may differ: everything is exact in f32).
    static func difference(_ a: ShardMetadata, _ b: ShardMetadata) -> String? {
        ShardMetadata.difference(a, b, dtype: false)
    }
}

/// The rows of the inventory: labels and row indices by slot, and the permutation to positions.
struct RowIndex {
    var labels: [Int32]          // by slot
    var rows: [Int64]            // by slot
    var positionsToSlots: [Int]  // sorted by row
    var labelsByPosition: [Int32] { positionsToSlots.map { labels[$0] } }
    var rowsByPosition: [Int] { positionsToSlots.map { Int(rows[$0]) } }

    init(labels: [Int32], rows: [Int64], shardOfSlot: (Int) -> String) throws {
        self.labels = labels; self.rows = rows
        positionsToSlots = (0..<rows.count).sorted { (rows[$0], $0) < (rows[$1], $1) }
        for (a, b) in zip(positionsToSlots, positionsToSlots.dropFirst()) where rows[a] == rows[b] {
            throw ShardError(file: shardOfSlot(b), reason: "row \(rows[b]) is also in \(shardOfSlot(a)): duplicate rows (the same data given twice?)")
        }
    }
}

enum DataLoader {
    /// Which of the stored layers the probes use, as indices into metadata.layers.
    static func layerIndices(_ metadata: ShardMetadata, requested: [Int]?) throws -> [Int] {
        guard let req = requested else { return Array(metadata.layers.indices) }
        return try req.map { l in
            guard let i = metadata.layers.firstIndex(of: l) else {
                throw TrainError("layer \(l) is not in the shards (they hold layers \(rangeText(metadata.layers)))")
            }
            return i
        }
    }

    static func rangeText(_ v: [Int]) -> String {
        if v.count > 2, v == Array(v[0]...v[v.count - 1]) { return "\(v[0])–\(v.last!)" }
        return v.map(String.init).joined(separator: ",")
    }

    /// Copies the kept layers of one stored row into `dst`, converting to `type`, and refuses NaN/Inf.
    static func copyRow(_ src: UnsafeRawPointer, stored: ActivationType, keep: [Int], dModel: Int, to dst: UnsafeMutableRawPointer,
                        type: ActivationType, file: String, row: () -> String) throws {
        for (j, l) in keep.enumerated() where UnsafeRawPointer(dst) != src {   // src == dst: decoded in place
            let s = src + l * dModel * stored.size
            let d = dst + j * dModel * type.size
            if stored == type {
                d.copyMemory(from: s, byteCount: dModel * type.size)
            } else {
                stored.convert(s, d.assumingMemoryBound(to: Float.self), dModel)   // only ever 16-bit → f32
            }
        }
        if !allFinite(UnsafeRawPointer(dst), count: keep.count * dModel, type: type) {
            throw ShardError(file: file, reason: "\(row()): NaN or infinite activation (layers \(keep)); the extraction is broken or the data corrupt")
        }
    }

    static func allFinite(_ p: UnsafeRawPointer, count: Int, type: ActivationType) -> Bool {
        switch type {
        case .f32:
            // A float is NaN/Inf iff its exponent bits are all ones.
            let mask = SIMD8<UInt32>(repeating: 0x7F80_0000)
            var i = 0
            while i + 8 <= count {
                if any(p.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<UInt32>.self) & mask .== mask) { return false }
                i += 8
            }
            while i < count {
                if p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x7F80_0000 == 0x7F80_0000 { return false }
                i += 1
            }
            return true
        case .f16, .bf16:
            let m: UInt16 = type == .f16 ? 0x7C00 : 0x7F80
            let u = p.assumingMemoryBound(to: UInt16.self)
            var bad = false
            for i in 0..<count where u[i] & m == m { bad = true }
            return !bad
        }
    }

    /// Decodes every shard once into memory (in parallel, one shard per thread at a time).
    static func loadResident(_ inv: ShardInventory, keep: [Int], type: ActivationType, pool: ThreadPool,
                             progress: ((Int, Int) -> Void)? = nil) throws -> (ResidentActivations, RowIndex) {
        let meta = inv.metadata
        let data = ResidentActivations(type: type, layerCount: keep.count, dModel: meta.dModel, count: inv.totalRows)
        let allLayers = keep == Array(meta.layers.indices)
        let index = try readEveryShard(inv, pool: pool, progress: progress, rowTarget: { ref, stored, i in
            // every layer kept in the stored type: the slot is the row as stored
            stored == type && allLayers ? data.slot(ref.firstSlot + i) : nil
        }, rowSink: { ref, stored, i, bytes in
            try copyRow(bytes, stored: stored, keep: keep, dModel: meta.dModel, to: data.slot(ref.firstSlot + i),
                        type: type, file: ref.path, row: { "row \(i) of the shard" })
        })
        data.setPositions(slotOfPosition: index.positionsToSlots, labels: index.labelsByPosition)
        return (data, index)
    }

    /// Reads only labels and rows (stopping before the activations): the first pass of streaming.
    static func scanLabels(_ inv: ShardInventory, pool: ThreadPool) throws -> RowIndex {
        try readEveryShard(inv, pool: pool, labelsOnly: true, rowSink: { _, _, _, _ in })
    }

    /// Streams every shard once, in parallel (one shard per thread at a time), checking each against the
    /// inventory, and returns the labels and row numbers of all of them. `rowTarget` and `rowSink` are
    /// ShardStream.read's, given the shard and its stored type; the first error (naming its shard) is thrown.
    private static func readEveryShard(
        _ inv: ShardInventory, pool: ThreadPool, progress: ((Int, Int) -> Void)? = nil, labelsOnly: Bool = false,
        rowTarget: (ShardRef, ActivationType, Int) -> UnsafeMutableRawPointer? = { _, _, _ in nil },
        rowSink: (ShardRef, ActivationType, Int, UnsafeRawPointer) throws -> Void
    ) throws -> RowIndex {
        let meta = inv.metadata
        let total = inv.totalRows
        var labels = [Int32](repeating: 0, count: total)
        var rows = [Int64](repeating: 0, count: total)
        var errors = [Error?](repeating: nil, count: inv.shards.count)
        let lock = NSLock()
        var done = 0
        labels.withUnsafeMutableBufferPointer { lp in
            rows.withUnsafeMutableBufferPointer { rp in
                errors.withUnsafeMutableBufferPointer { ep in
                    let (lp, rp, ep) = (lp, rp, ep)
                    pool.parallelFor(inv.shards.count) { si in
                        let ref = inv.shards[si]
                        do {
                            var stored = ActivationType.f32
                            let c = try ShardStream.read(path: ref.path, hook: inv.hook, header: { m, n in
                                if let diff = ShardInventory.difference(meta, m) {
                                    throw ShardError(file: ref.path, reason: "metadata differs from its manifest: \(diff)")
                                }
                                guard n == ref.count else {
                                    throw ShardError(file: ref.path, reason: "holds \(n) rows but its manifest says \(ref.count)")
                                }
                                stored = m.dtype
                            }, labelsOnly: labelsOnly, rowTarget: { i in rowTarget(ref, stored, i) },
                            rowSink: { i, bytes in try rowSink(ref, stored, i, bytes) })
                            if let bad = c.rows.first(where: { !(0...Int64(Manifest.maxRows)).contains($0) }) {
                                throw ShardError(file: ref.path, reason: "'row' value \(bad) is not a row number (0...\(Manifest.maxRows))")
                            }
                            for i in 0..<c.count {
                                lp[ref.firstSlot + i] = Int32(c.labels[i])
                                rp[ref.firstSlot + i] = c.rows[i] + ref.rowOffset   // both at most 2^40
                            }
                        } catch {
                            ep[si] = error
                        }
                        lock.lock(); done += 1; let d = done; lock.unlock()
                        progress?(d, inv.shards.count)
                    }
                }
            }
        }
        if let e = errors.compactMap({ $0 }).first { throw e }
        return try RowIndex(labels: labels, rows: rows, shardOfSlot: { s in inv.shards.last { $0.firstSlot <= s }!.path })
    }
}

/// Activations streamed from the shards every epoch, for data larger than --max-memory: shards in a
/// shuffled order, rows through a shuffle buffer of `bufferRows` rows from which random batches are drawn.
/// Validation and ordered passes read the shards in order.
public final class StreamingActivations: ActivationSource, @unchecked Sendable {
    public let type: ActivationType
    public let layerCount: Int
    public let dModel: Int
    let inventory: ShardInventory
    let keep: [Int]
    let positionOfSlot: [Int]
    let labelsBySlot: [Int32]
    let rowBytes: Int
    let bufferRows: Int
    private let buffer: UnsafeMutableRawPointer
    private let batch: UnsafeMutableRawPointer
    private let batchCapacity: Int

    init(inventory: ShardInventory, keep: [Int], type: ActivationType, index: RowIndex, bufferRows: Int, maxBatch: Int) {
        self.inventory = inventory; self.keep = keep; self.type = type
        layerCount = keep.count; dModel = inventory.metadata.dModel
        rowBytes = keep.count * dModel * type.size
        var pos = [Int](repeating: 0, count: index.positionsToSlots.count)
        for (p, s) in index.positionsToSlots.enumerated() { pos[s] = p }
        positionOfSlot = pos
        labelsBySlot = index.labels
        self.bufferRows = max(bufferRows, maxBatch)
        batchCapacity = maxBatch
        buffer = UnsafeMutableRawPointer.allocate(byteCount: self.bufferRows * rowBytes, alignment: 64)
        batch = UnsafeMutableRawPointer.allocate(byteCount: maxBatch * rowBytes, alignment: 64)
    }

    deinit { buffer.deallocate(); batch.deallocate() }

    public func forEachBatch(positions: [Int], batchSize: Int, shuffle: inout ProbeRNG?, _ body: (BatchView) throws -> Void) throws {
        precondition(batchSize <= batchCapacity)
        var wanted = [Bool](repeating: false, count: positionOfSlot.count)
        for p in positions { wanted[p] = true }
        var shardOrder = Array(inventory.shards.indices)
        if shuffle != nil { shuffle!.shuffle(&shardOrder) }
        var held = 0
        var heldLabels = [Int32](), heldPositions = [Int]()
        let stored = inventory.metadata.dtype
        // Without shuffling the buffer is a FIFO of one batch.
        let capacity = shuffle == nil ? batchSize : bufferRows

        func emit(_ n: Int) throws {
            // Move n rows (random ones when shuffling) from the buffer into the batch, refill the holes.
            var labels = [Int32](), rows = [UnsafeRawPointer](), picked = [Int]()
            for k in 0..<n {
                let pick = shuffle != nil ? shuffle!.below(held) : k
                (batch + k * rowBytes).copyMemory(from: buffer + pick * rowBytes, byteCount: rowBytes)
                labels.append(heldLabels[pick])
                picked.append(heldPositions[pick])
                rows.append(UnsafeRawPointer(batch + k * rowBytes))
                if shuffle != nil {
                    if pick != held - 1 {
                        (buffer + pick * rowBytes).copyMemory(from: buffer + (held - 1) * rowBytes, byteCount: rowBytes)
                        heldLabels[pick] = heldLabels[held - 1]
                        heldPositions[pick] = heldPositions[held - 1]
                    }
                    heldLabels.removeLast()
                    heldPositions.removeLast()
                    held -= 1
                }
            }
            if shuffle == nil {
                // FIFO: drop the first n.
                let rest = held - n
                if rest > 0 { buffer.copyMemory(from: buffer + n * rowBytes, byteCount: rest * rowBytes) }
                heldLabels.removeFirst(n)
                heldPositions.removeFirst(n)
                held = rest
            }
            try body(BatchView(rows: rows, labels: labels, positions: picked))
        }

        for si in shardOrder {
            let ref = inventory.shards[si]
            _ = try ShardStream.read(path: ref.path, hook: inventory.hook, rowSink: { i, bytes in
                let slot = ref.firstSlot + i
                guard wanted[self.positionOfSlot[slot]] else { return }
                if held == capacity { try emit(batchSize) }
                try DataLoader.copyRow(bytes, stored: stored, keep: self.keep, dModel: self.dModel, to: self.buffer + held * self.rowBytes,
                                       type: self.type, file: ref.path, row: { "row \(i) of the shard" })
                heldLabels.append(self.labelsBySlot[slot])
                heldPositions.append(self.positionOfSlot[slot])
                held += 1
            })
        }
        while held > 0 { try emit(min(batchSize, held)) }
    }
}

/// Large anonymous mappings with transparent huge pages requested: faulting in gigabytes of 4 KiB pages
/// costs seconds on virtual machines; 2 MiB pages cut the faults 512-fold.
enum HugeBuffer {
    static func allocate(_ bytes: Int) -> (UnsafeMutableRawPointer, mapped: Bool) {
        guard bytes >= 4 << 20, let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              p != MAP_FAILED else {
            return (UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64), false)
        }
        _ = madvise(p, bytes, 14)   // MADV_HUGEPAGE
        return (p, true)
    }

    static func deallocate(_ p: UnsafeMutableRawPointer, _ bytes: Int, mapped: Bool) {
        if mapped { munmap(p, bytes) } else { p.deallocate() }
    }
}
