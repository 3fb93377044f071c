//! The discrete-event engine: one clock, one event queue, the mesh's requests as frames
//! (one per request at one service), and the load generator's clients.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use meshbench_worker::config::DelayMode;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::load::{Load, Outcome};
use super::mesh::Service;

/// Latency the network and the proxies add to a hop (request and response), and CPU a
/// worker spends per request outside the endpoint's own work: the capacity model's
/// measured overheads (`meshbench_analysis::capacity::Overhead`), so both agree.
#[derive(Debug, Clone, Copy)]
pub struct Overheads {
    /// Seconds per hop.
    pub hop: f64,
    /// CPU seconds per request.
    pub request_cpu: f64,
}

/// Where a frame's answer goes.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// Request `id` of the load generator's stage `stage`.
    Client { id: usize, stage: u32 },
    /// A call of `frame`'s (generation `generation`) group `group`.
    Parent {
        frame: usize,
        generation: u32,
        group: usize,
    },
}

/// A call group's progress inside a frame.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    /// Call index in the group.
    call: usize,
    /// Attempts of that call made.
    attempt: u32,
    /// The child frame awaited, and its generation (a late answer of an abandoned
    /// child is ignored).
    waiting: Option<(usize, u32)>,
    done: bool,
    /// Why the group failed: 502 or 504.
    failure: Option<u16>,
}

/// A client's keep-alive connections to one Service: (client service, client replica,
/// Service); the load generator is client service [`LOADGEN`].
type PoolKey = (u32, u32, u32);
const LOADGEN: u32 = u32::MAX;

/// One request at one service.
#[derive(Debug, Clone)]
struct Frame {
    svc: usize,
    ep: usize,
    replica: usize,
    /// The pool its connection goes back to when it answers.
    conn: PoolKey,
    arrived: f64,
    caller: Caller,
    groups: Vec<Group>,
    groups_left: usize,
    /// CPU seconds of its work.
    work: f64,
    /// Its work holds one of the replica's CPU threads (the worker takes a permit only
    /// for an endpoint with CPU or memory work).
    pooled: bool,
    generation: u32,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// The frame's CPU work is done.
    CpuDone { frame: usize },
    /// The frame's answer leaves its worker.
    Answer { frame: usize, status: u16 },
    /// An answer reaches its caller.
    Deliver {
        caller: Caller,
        child: usize,
        generation: u32,
        status: u16,
    },
    /// The caller (`frame` of generation `parent`) stops waiting for `child` (generation
    /// `generation`).
    CallTimeout {
        frame: usize,
        parent: u32,
        group: usize,
        child: usize,
        generation: u32,
    },
    /// The load generator's next event (stale unless `token` is the latest).
    Load { token: u64 },
    /// A client request's timeout.
    ClientTimeout { id: usize, stage: u32 },
    /// The control loop's tick (sampling, metrics, HPA, readiness, scheduling).
    Tick,
}

struct Scheduled {
    t: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .t
            .total_cmp(&self.t)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The simulation's state.
pub struct Engine {
    /// Seconds since the run's start.
    pub now: f64,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    frames: Vec<Frame>,
    free: Vec<usize>,
    /// Services of the deployed mesh.
    pub services: Vec<Service>,
    /// The load in progress, if any.
    pub load: Option<Load>,
    rng: Xoshiro256PlusPlus,
    overheads: Overheads,
    /// Events processed (for the speed figure).
    pub events: u64,
    tick_scheduled: bool,
    load_token: u64,
    /// Stages started: a late answer or timeout of an earlier stage's request is dropped.
    stage: u32,
    /// Idle keep-alive connections, by pool: the replica each one reached.
    pools: HashMap<PoolKey, Vec<u32>>,
}

impl Engine {
    /// An engine at time 0 with no mesh.
    pub fn new(seed: u64, overheads: Overheads) -> Self {
        Self {
            now: 0.0,
            queue: BinaryHeap::new(),
            seq: 0,
            frames: Vec::new(),
            free: Vec::new(),
            services: Vec::new(),
            load: None,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            overheads,
            events: 0,
            tick_scheduled: false,
            load_token: 0,
            stage: 0,
            pools: HashMap::new(),
        }
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// Schedules the control loop's first tick at `t` (once per engine).
    pub fn start_ticks(&mut self, t: f64) {
        if !self.tick_scheduled {
            self.tick_scheduled = true;
            self.at(t, Ev::Tick);
        }
    }

    /// Starts a stage of load at `load`'s start.
    pub fn start_load(&mut self, load: Load, start: f64) {
        self.stage = self.stage.wrapping_add(1);
        self.load = Some(load);
        self.wake_load(start);
    }

    fn wake_load(&mut self, t: f64) {
        self.load_token += 1;
        let token = self.load_token;
        self.at(t, Ev::Load { token });
    }

    /// Runs events up to `until` (inclusive); `on_tick` is the control loop. Returns
    /// early when `stop` says so after an event.
    pub fn run_until(
        &mut self,
        until: f64,
        on_tick: &mut dyn FnMut(&mut Engine),
        stop: &dyn Fn(&Engine) -> bool,
    ) {
        while let Some(next) = self.queue.peek() {
            if next.t > until {
                break;
            }
            let Some(s) = self.queue.pop() else { break };
            self.now = s.t;
            self.events += 1;
            match s.ev {
                Ev::Tick => {
                    on_tick(self);
                    let t = self.now + 1.0;
                    self.at(t, Ev::Tick);
                }
                other => self.handle(other),
            }
            if stop(self) {
                return;
            }
        }
        self.now = self.now.max(until);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::CpuDone { frame } => self.cpu_done(frame),
            Ev::Answer { frame, status } => self.answer(frame, status),
            Ev::Deliver {
                caller,
                child,
                generation,
                status,
            } => self.deliver(caller, child, generation, status),
            Ev::CallTimeout {
                frame,
                parent,
                group,
                child,
                generation,
            } => {
                if self
                    .frames
                    .get(frame)
                    .is_some_and(|f| f.generation == parent)
                {
                    self.call_timeout(frame, group, child, generation);
                }
            }
            Ev::Load { token } => {
                if token == self.load_token {
                    self.load_event();
                }
            }
            Ev::ClientTimeout { id, stage } => {
                if stage != self.stage {
                    return;
                }
                if let Some(load) = self.load.as_mut() {
                    load.timed_out(id, self.now);
                }
                self.load_event();
            }
            Ev::Tick => {}
        }
    }

    // ---- the load generator ----

    fn load_event(&mut self) {
        let Some(mut load) = self.load.take() else {
            return;
        };
        let now = self.now;
        let mut sends = Vec::new();
        let next = load.poll(now, &mut sends);
        for id in sends {
            self.send_entry(&mut load, id);
        }
        self.load = Some(load);
        if let Some(t) = next {
            self.wake_load(t);
        }
    }

    fn send_entry(&mut self, load: &mut Load, id: usize) {
        let deadline = self.now + load.timeout;
        let stage = self.stage;
        self.at(deadline, Ev::ClientTimeout { id, stage });
        let caller = Caller::Client { id, stage };
        let (svc, ep) = (load.target.0, load.target.1);
        match ep {
            Some(ep) => {
                self.request(svc, ep, caller);
            }
            None => self.answer_without_frame(caller, 404, self.overheads.hop),
        }
    }

    // ---- requests ----

    /// A request for `svc`'s endpoint `ep` from `caller`, over one of the caller's
    /// connections ([`Engine::connect`]); refused when there is none to be had. Returns
    /// the new frame, or `None` when the request was refused or shed (its answer is on
    /// its way with `child = usize::MAX`).
    fn request(&mut self, svc: usize, ep: usize, caller: Caller) -> Option<usize> {
        let hop = self.overheads.hop;
        let conn = self.pool_key(caller, svc);
        let Some(replica) = self.connect(conn, svc) else {
            // Connection refused: the caller sees it at once.
            self.answer_without_frame(caller, 0, hop);
            return None;
        };
        let s = &mut self.services[svc];
        let endpoint = &s.endpoints[ep];
        // The worker sheds on the endpoint's own in-flight count.
        let in_flight = s.replicas[replica]
            .ep_in_flight
            .get(ep)
            .copied()
            .unwrap_or(0);
        if endpoint
            .max_in_flight
            .is_some_and(|max| in_flight.saturating_add(1) > max)
        {
            // Answered (and counted) by the worker at once.
            s.answered += 1;
            s.errors += 1;
            self.pools.entry(conn).or_default().push(replica as u32);
            self.answer_without_frame(caller, 503, hop);
            return None;
        }
        let groups = endpoint.groups.len();
        let pooled = endpoint.pooled;
        let work = endpoint.cpu + self.overheads.request_cpu;
        let frame = self.alloc(Frame {
            svc,
            ep,
            replica,
            conn,
            arrived: self.now,
            caller,
            groups: vec![Group::default(); groups],
            groups_left: groups,
            work,
            pooled,
            generation: 0,
        });
        let threads = self.services[svc].threads;
        let r = &mut self.services[svc].replicas[replica];
        r.in_flight += 1;
        if let Some(n) = r.ep_in_flight.get_mut(ep) {
            *n += 1;
        }
        if !pooled {
            // No CPU permit: only the per-request overhead, on the request's own task.
            r.cpu_used += work;
            self.at(self.now + work, Ev::CpuDone { frame });
        } else if r.busy < threads {
            self.start_cpu(frame, work);
        } else {
            self.services[svc].replicas[replica]
                .queue
                .push_back((frame, work));
        }
        Some(frame)
    }

    /// An answer no frame gives (refused, shed, or a path the target does not serve),
    /// reaching `caller` after `after` seconds; status 0 is a refused connection.
    fn answer_without_frame(&mut self, caller: Caller, status: u16, after: f64) {
        self.at(
            self.now + after,
            Ev::Deliver {
                caller,
                child: usize::MAX,
                generation: 0,
                status,
            },
        );
    }

    fn pool_key(&self, caller: Caller, svc: usize) -> PoolKey {
        let svc = u32::try_from(svc).unwrap_or(u32::MAX);
        match caller {
            Caller::Client { .. } => (LOADGEN, 0, svc),
            Caller::Parent { frame, .. } => {
                let f = &self.frames[frame];
                let id = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
                (id(f.svc), id(f.replica), svc)
            }
        }
    }

    /// The replica a request goes to. kube-proxy balances connections, not requests: an
    /// idle keep-alive connection of the caller's pool is reused and stays on the replica
    /// it reached, ready or not, as long as that replica serves; only a new connection is
    /// routed, at random among the Service's routed replicas. `None`: refused.
    fn connect(&mut self, key: PoolKey, svc: usize) -> Option<usize> {
        if let Some(pool) = self.pools.get_mut(&key) {
            while let Some(r) = pool.pop() {
                let r = r as usize;
                if self.services[svc]
                    .replicas
                    .get(r)
                    .is_some_and(|x| !x.terminating)
                {
                    return Some(r);
                }
            }
        }
        let s = &self.services[svc];
        if s.routable.is_empty() {
            return None;
        }
        Some(s.routable[self.rng.random_range(0..s.routable.len())])
    }

    fn alloc(&mut self, mut f: Frame) -> usize {
        match self.free.pop() {
            Some(i) => {
                f.generation = self.frames[i].generation.wrapping_add(1);
                self.frames[i] = f;
                i
            }
            None => {
                self.frames.push(f);
                self.frames.len() - 1
            }
        }
    }

    fn start_cpu(&mut self, frame: usize, work: f64) {
        let (svc, replica) = (self.frames[frame].svc, self.frames[frame].replica);
        let s = &mut self.services[svc];
        s.replicas[replica].busy += 1;
        let done = s.cpu_finish(replica, self.now, work);
        self.at(done, Ev::CpuDone { frame });
    }

    fn cpu_done(&mut self, frame: usize) {
        let f = &self.frames[frame];
        let (svc, replica, work, pooled) = (f.svc, f.replica, f.work, f.pooled);
        if pooled {
            // Booked when done, so the samples never show more CPU than was used.
            let r = &mut self.services[svc].replicas[replica];
            r.cpu_used += work;
            r.busy = r.busy.saturating_sub(1);
            if let Some((next, work)) = r.queue.pop_front() {
                self.start_cpu(next, work);
            }
        }
        if self.frames[frame].groups_left == 0 {
            self.finish(frame);
            return;
        }
        for g in 0..self.frames[frame].groups.len() {
            self.advance_group(frame, g);
        }
    }

    /// Makes the group's next call, or closes the group.
    fn advance_group(&mut self, frame: usize, g: usize) {
        loop {
            let f = &self.frames[frame];
            let spec = &self.services[f.svc].endpoints[f.ep].groups[g];
            let group = f.groups[g];
            let Some(call) = spec.get(group.call).cloned() else {
                self.close_group(frame, g);
                return;
            };
            if group.attempt >= call.repeat {
                self.frames[frame].groups[g].call += 1;
                self.frames[frame].groups[g].attempt = 0;
                continue;
            }
            if group.attempt == 0 {
                let ep = &self.services[f.svc].endpoints[f.ep];
                if !ep.rng.chance(call.probability) {
                    self.frames[frame].groups[g].call += 1;
                    continue;
                }
            }
            self.frames[frame].groups[g].attempt += 1;
            let Some(callee_ep) = call.ep else {
                // No such path on the callee: a 404, which fails the group.
                self.fail_group(frame, g, 502);
                return;
            };
            let parent = Caller::Parent {
                frame,
                generation: self.frames[frame].generation,
                group: g,
            };
            let waiting = match self.request(call.svc, callee_ep, parent) {
                Some(child) => (child, self.frames[child].generation),
                None => (usize::MAX, 0),
            };
            self.frames[frame].groups[g].waiting = Some(waiting);
            let t = self.now + call.timeout;
            let parent = self.frames[frame].generation;
            self.at(
                t,
                Ev::CallTimeout {
                    frame,
                    parent,
                    group: g,
                    child: waiting.0,
                    generation: waiting.1,
                },
            );
            return;
        }
    }

    fn fail_group(&mut self, frame: usize, g: usize, status: u16) {
        self.frames[frame].groups[g].failure = Some(status);
        self.close_group(frame, g);
    }

    fn close_group(&mut self, frame: usize, g: usize) {
        let f = &mut self.frames[frame];
        if f.groups[g].done {
            return;
        }
        f.groups[g].done = true;
        f.groups[g].waiting = None;
        f.groups_left -= 1;
        if f.groups_left == 0 {
            self.finish(frame);
        }
    }

    /// Calls done: a failed group's status at once (the first group in order that
    /// failed, as the worker reports), else the error draw, then the delay.
    fn finish(&mut self, frame: usize) {
        let f = &self.frames[frame];
        let ep = &self.services[f.svc].endpoints[f.ep];
        if let Some(status) = f.groups.iter().find_map(|g| g.failure) {
            self.at(self.now, Ev::Answer { frame, status });
            return;
        }
        let status = if ep.rng.chance(ep.error_rate) {
            500
        } else {
            200
        };
        let at = match &ep.delay {
            Some((sampler, mode)) => {
                let d = sampler.sample(&ep.rng).as_secs_f64();
                match mode {
                    DelayMode::AfterWork => self.now + d,
                    DelayMode::MinimumTotal => self.now.max(f.arrived + d),
                }
            }
            None => self.now,
        };
        self.at(at, Ev::Answer { frame, status });
    }

    fn answer(&mut self, frame: usize, status: u16) {
        let f = &self.frames[frame];
        let (svc, replica, arrived, caller, generation, conn) =
            (f.svc, f.replica, f.arrived, f.caller, f.generation, f.conn);
        self.pools.entry(conn).or_default().push(replica as u32);
        let ep = self.frames[frame].ep;
        let s = &mut self.services[svc];
        let r = &mut s.replicas[replica];
        r.in_flight = r.in_flight.saturating_sub(1);
        if let Some(n) = r.ep_in_flight.get_mut(ep) {
            *n = n.saturating_sub(1);
        }
        s.answered += 1;
        if status >= 500 {
            s.errors += 1;
        }
        s.latency_sum += self.now - arrived;
        self.free.push(frame);
        self.at(
            self.now + self.overheads.hop,
            Ev::Deliver {
                caller,
                child: frame,
                generation,
                status,
            },
        );
    }

    fn deliver(&mut self, caller: Caller, child: usize, generation: u32, status: u16) {
        match caller {
            Caller::Client { id, stage } => {
                if stage != self.stage {
                    return;
                }
                if let Some(load) = self.load.as_mut() {
                    let outcome = match status {
                        0 => Outcome::ConnectionError,
                        s => Outcome::Status(s),
                    };
                    load.answered(id, self.now, outcome);
                }
                self.load_event();
            }
            Caller::Parent {
                frame,
                generation: parent_gen,
                group,
            } => {
                let Some(f) = self
                    .frames
                    .get(frame)
                    .filter(|f| f.generation == parent_gen)
                else {
                    return;
                };
                // Only the call awaited: a late answer of an abandoned call is dropped.
                if f.groups.get(group).and_then(|g| g.waiting) != Some((child, generation)) {
                    return;
                }
                self.frames[frame].groups[group].waiting = None;
                if (200..400).contains(&status) {
                    self.advance_group(frame, group);
                } else {
                    self.fail_group(frame, group, 502);
                }
            }
        }
    }

    fn call_timeout(&mut self, frame: usize, group: usize, child: usize, generation: u32) {
        let Some(g) = self.frames.get(frame).and_then(|f| f.groups.get(group)) else {
            return;
        };
        if g.waiting != Some((child, generation)) {
            return;
        }
        // The child goes on and still uses its CPU, as an abandoned request does.
        self.frames[frame].groups[group].waiting = None;
        let f = &self.frames[frame];
        if self.services[f.svc].endpoints[f.ep].ignore_call_timeouts {
            self.advance_group(frame, group);
        } else {
            self.fail_group(frame, group, 504);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_then_insertion_order() {
        let mut e = Engine::new(
            1,
            Overheads {
                hop: 0.0,
                request_cpu: 0.0,
            },
        );
        e.at(2.0, Ev::Load { token: 0 });
        e.at(1.0, Ev::Tick);
        e.at(1.0, Ev::Load { token: 0 });
        let order: Vec<(f64, bool)> = std::iter::from_fn(|| e.queue.pop())
            .map(|s| (s.t, matches!(s.ev, Ev::Tick)))
            .collect();
        assert_eq!(order, vec![(1.0, true), (1.0, false), (2.0, false)]);
    }

    #[test]
    fn the_frame_slab_reuses_slots_with_a_new_generation() {
        let mut e = Engine::new(
            1,
            Overheads {
                hop: 0.0,
                request_cpu: 0.0,
            },
        );
        let frame = || Frame {
            svc: 0,
            ep: 0,
            replica: 0,
            conn: (0, 0, 0),
            arrived: 0.0,
            caller: Caller::Client { id: 0, stage: 0 },
            groups: Vec::new(),
            groups_left: 0,
            work: 0.0,
            pooled: true,
            generation: 0,
        };
        let a = e.alloc(frame());
        let g = e.frames[a].generation;
        e.free.push(a);
        let b = e.alloc(frame());
        assert_eq!(a, b);
        assert_ne!(g, e.frames[b].generation);
    }
}
