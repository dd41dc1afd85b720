"""The streaming pass of annotate-bag: every message queued for the output in input order, chosen
frames gathered into batches per topic, a batch closed when full or old (then run through the
model, or taken from the record) and appended to the record, the queue released as frames get
their results. Batch boundaries depend only on the bag, so a resumed run batches the same way."""
from __future__ import annotations

import time
from collections import Counter, deque
from contextlib import closing

from instructsam_core.errors import UserError
from instructsam_ros.bags.frames import Batch, Entry, apply_record, record_of, result_of
from instructsam_ros.bags.journal import RunState
from instructsam_ros.bags.options import AnnotateOptions
from instructsam_ros.bags.reading import ImageTopic, bag_messages, decode_frame, prefetched
from instructsam_ros.bags.summary import Summary
from instructsam_ros.bags.writer import OUTPUT_QUEUE, OutputBag

# A batch waits at most this much bag time for more frames, so the messages held back until
# it is done stay a second of recording (a slow camera beside a fast one would hold more).
MAX_BATCH_SPAN_NS = 10**9


class AnnotationPass:
    """The streaming pass (see the module docstring)."""

    def __init__(self, reader, options: AnnotateOptions, topics: list[ImageTopic], window: tuple[int, int],
                 state: RunState, output: OutputBag, load_predictor, summary: Summary, bar) -> None:
        self.reader, self.options, self.topics, self.window = reader, options, topics, window
        self.state, self.output, self.load_predictor, self.summary, self.bar = state, output, load_predictor, summary, bar
        self.predictor = None
        self.used: set[tuple[int, int]] = set()
        self.skipped_here = 0

    def run(self) -> None:
        options = self.options
        topic_of = {c.id: i for i, t in enumerate(self.topics) for c in t.connections}
        counters = Counter()
        open_batches: dict[int, Batch] = {}
        held: deque[Entry] = deque()
        stream = bag_messages(self.reader, options.bag)
        if options.use_threads:
            stream = prefetched(stream, OUTPUT_QUEUE)
        with closing(stream):
            for connection, log_time, raw in stream:
                self._take(connection, log_time, raw, topic_of, counters, open_batches, held)
        for number in list(open_batches):
            self._close(open_batches.pop(number))
        while held:
            self.output.put(held.popleft())
        unused = set(self.state.batches) - self.used
        if unused:
            topic, first = min(unused)
            raise UserError(f"the record has frames of {self.topics[topic].name} from rank {first} that "
                            f"{options.bag} no longer has; pass --overwrite to start over")

    def _take(self, connection, log_time: int, raw: bytes, topic_of: dict, counters: Counter,
              open_batches: dict[int, Batch], held: deque) -> None:
        """One input message: queue it, add a chosen frame to its batch, close full or old batches."""
        options, seconds = self.options, self.summary.seconds
        for number in [n for n, b in open_batches.items() if log_time - b.start_time > MAX_BATCH_SPAN_NS]:
            self._close(open_batches.pop(number))
        entry = Entry(connection, log_time, raw)
        held.append(entry)
        number = topic_of.get(connection.id)
        if number is not None and self.window[0] <= log_time < self.window[1]:
            index = counters[number]
            counters[number] += 1
            if index % options.every == 0:
                entry.topic, entry.index = number, index
                batch = open_batches.get(number)
                if batch is None:
                    rank = index // options.every
                    batch = open_batches[number] = Batch(number, rank, log_time,
                                                          record=self.state.batches.get((number, rank)))
                batch.entries.append(entry)
                if batch.record is None:
                    start = time.perf_counter()
                    decode_frame(self.reader, self.topics[number], entry, options.max_pixels)
                    seconds["decode"] += time.perf_counter() - start
                if len(batch.entries) == options.batch_size:
                    self._close(open_batches.pop(number))
        while held and held[0].ready:
            self.output.put(held.popleft())

    def _close(self, batch: Batch) -> None:
        if batch.record is not None:
            expected = [(int(r["index"]), int(r["time"])) for r in batch.record]
            if expected != [(e.index, e.log_time) for e in batch.entries]:
                raise UserError(f"{self.options.bag} is not the bag the record was made from "
                                f"({self.topics[batch.topic].name} near frame {batch.entries[0].index}); "
                                "pass --overwrite to start over")
            for entry, record in zip(batch.entries, batch.record):
                apply_record(entry, record)
            self.used.add((batch.topic, batch.first))
        else:
            self._predict(batch)
            start = time.perf_counter()
            self.state.append(batch.topic, batch.first, [record_of(e) for e in batch.entries])
            self.summary.seconds["record"] += time.perf_counter() - start
            self.bar.update(len(batch.entries))
        skipped = sum(1 for e in batch.entries if e.skipped is not None)
        if skipped and batch.record is None:
            self.skipped_here += skipped
            self.bar.set_postfix(skipped=self.skipped_here, refresh=False)
        counts = self.summary.per_topic.setdefault(self.topics[batch.topic].name, [0, 0])
        counts[0] += len(batch.entries) - skipped
        counts[1] += skipped
        for entry in batch.entries:
            if entry.skipped is not None:
                self.summary.skipped[entry.skipped.split(" (")[0]] += 1
            else:
                self.summary.phrases.update(item["phrase"] for item in entry.result.instances)
                if not self.options.overlay:
                    entry.rgb = None  # the writer needs the pixels only for overlays

    def _predict(self, batch: Batch) -> None:
        """The model on a batch; frames of one image size go through it together."""
        seconds, options = self.summary.seconds, self.options
        if self.predictor is None:
            start = time.perf_counter()
            self.predictor = self.load_predictor()
            seconds["load"] += time.perf_counter() - start
        groups: dict[tuple, list[Entry]] = {}
        for entry in batch.entries:
            if entry.skipped is None:
                groups.setdefault(entry.rgb.shape, []).append(entry)
        for members in groups.values():
            count = len(members)
            phrases = None if options.phrases is None else [list(options.phrases)] * count
            start = time.perf_counter()
            try:
                results = self.predictor.predict_batch([e.rgb for e in members], [options.instruction] * count, phrases)
            except RuntimeError as error:
                if "out of memory" in str(error).lower():
                    raise UserError(f"the device ran out of memory on a batch of {count} frames; "
                                    "use a smaller --batch-size") from None
                raise
            seconds["model"] += time.perf_counter() - start
            start = time.perf_counter()
            for entry, prediction in zip(members, results):
                entry.result = result_of(entry, prediction)
            seconds["record"] += time.perf_counter() - start

