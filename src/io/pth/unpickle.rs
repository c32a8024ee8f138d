//! A restricted unpickler for the `data.pkl` of a `torch.save` checkpoint.
//!
//! It implements the opcodes that protocols 2–5 use for state dicts and nothing that could run
//! code: a global is only looked up in a fixed allow-list (ordered dicts, tensor and parameter
//! rebuilds, typed storages, dtypes) and REDUCE only "calls" those rebuilds, which here just
//! record their arguments. Every other global is rejected with [`Error::ForbiddenGlobal`] the
//! moment it is named.
//!
//! Objects live in an arena and are referred to by index, so the memo, the stack and containers
//! share them without copies (a memoised object fetched a million times costs a million
//! indices, not a million copies) and reference cycles cannot leak. Every length read from the
//! pickle is checked against the bytes that remain before anything is allocated, and the stack,
//! the memo and the arena are capped.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Index of an object in [`Pickle::objs`].
pub(super) type Id = usize;

/// Most items the stack (and the mark stack) may hold. `pickle` batches SETITEMS by 1000 pairs,
/// so real state dicts stay far below this.
const MAX_STACK: usize = 1 << 20;
/// Most distinct memo entries.
const MAX_MEMO: usize = 1 << 22;
/// Most objects one pickle may create (each opcode creates at most one).
const MAX_OBJECTS: usize = 1 << 24;
/// Most dimensions of a rebuilt tensor (torch itself allows 64).
const MAX_RANK: usize = 64;
/// Longest global name quoted in an error message.
const MAX_QUOTE: usize = 120;

/// The supported opcodes: `op::NAME` constants and [`op_name`] from one list.
macro_rules! opcodes {
    ($($name:ident = $byte:expr),* $(,)?) => {
        /// Opcode bytes, named as in `pickletools`.
        mod op {
            $(pub(super) const $name: u8 = $byte;)*
        }

        /// The `pickletools` name of an opcode, or its hex value.
        fn op_name(byte: u8) -> String {
            match byte {
                $(op::$name => stringify!($name).to_string(),)*
                _ => format!("0x{byte:02x}"),
            }
        }
    };
}

opcodes! {
    PROTO = 0x80, FRAME = 0x95, STOP = b'.', EMPTY_DICT = b'}', EMPTY_LIST = b']',
    EMPTY_TUPLE = b')', MARK = b'(', TUPLE = b't', TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87,
    LIST = b'l', DICT = b'd', BINUNICODE = b'X', SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d,
    BININT = b'J', BININT1 = b'K', BININT2 = b'M', LONG1 = 0x8a, LONG4 = 0x8b, BINFLOAT = b'G',
    NONE = b'N', NEWTRUE = 0x88, NEWFALSE = 0x89, BINPUT = b'q', LONG_BINPUT = b'r',
    MEMOIZE = 0x94, BINGET = b'h', LONG_BINGET = b'j', SETITEM = b's', SETITEMS = b'u',
    APPEND = b'a', APPENDS = b'e', GLOBAL = b'c', STACK_GLOBAL = 0x93, REDUCE = b'R',
    BUILD = b'b', BINPERSID = b'Q', POP = b'0', POP_MARK = b'1',
}

/// An unpickled object.
pub(super) enum Obj {
    None,
    /// A bool (`requires_grad` …); its value is never needed.
    Bool,
    Int(i64),
    /// A float; its value is never needed.
    Float,
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Obj {
    /// What kind of object this is, for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool => "bool",
            Obj::Int(_) => "int",
            Obj::Float => "float",
            Obj::Str(_) => "str",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// An allow-listed global.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    /// A typed storage class such as `torch.BFloat16Storage`; only valid in persistent ids.
    Storage(DType),
    /// A dtype object such as `torch.bfloat16`; a plain value.
    DType(DType),
}

/// The allow-list: `(module, name, global)`.
const GLOBALS: &[(&str, &str, Global)] = &[
    ("collections", "OrderedDict", Global::OrderedDict),
    (
        "torch._utils",
        "_rebuild_tensor_v2",
        Global::RebuildTensorV2,
    ),
    (
        "torch._utils",
        "_rebuild_parameter",
        Global::RebuildParameter,
    ),
    (
        "torch._utils",
        "_rebuild_parameter_with_state",
        Global::RebuildParameterWithState,
    ),
    ("torch", "FloatStorage", Global::Storage(DType::F32)),
    ("torch", "DoubleStorage", Global::Storage(DType::F64)),
    ("torch", "HalfStorage", Global::Storage(DType::F16)),
    ("torch", "BFloat16Storage", Global::Storage(DType::BF16)),
    ("torch", "LongStorage", Global::Storage(DType::I64)),
    ("torch", "IntStorage", Global::Storage(DType::I32)),
    ("torch", "ShortStorage", Global::Storage(DType::I16)),
    ("torch", "CharStorage", Global::Storage(DType::I8)),
    ("torch", "ByteStorage", Global::Storage(DType::U8)),
    ("torch", "BoolStorage", Global::Storage(DType::Bool)),
    (
        "torch",
        "Float8_e4m3fnStorage",
        Global::Storage(DType::F8E4M3),
    ),
    (
        "torch",
        "Float8_e5m2Storage",
        Global::Storage(DType::F8E5M2),
    ),
    ("torch", "float32", Global::DType(DType::F32)),
    ("torch", "float", Global::DType(DType::F32)),
    ("torch", "float64", Global::DType(DType::F64)),
    ("torch", "double", Global::DType(DType::F64)),
    ("torch", "float16", Global::DType(DType::F16)),
    ("torch", "half", Global::DType(DType::F16)),
    ("torch", "bfloat16", Global::DType(DType::BF16)),
    ("torch", "int64", Global::DType(DType::I64)),
    ("torch", "long", Global::DType(DType::I64)),
    ("torch", "int32", Global::DType(DType::I32)),
    ("torch", "int", Global::DType(DType::I32)),
    ("torch", "int16", Global::DType(DType::I16)),
    ("torch", "short", Global::DType(DType::I16)),
    ("torch", "int8", Global::DType(DType::I8)),
    ("torch", "uint8", Global::DType(DType::U8)),
    ("torch", "bool", Global::DType(DType::Bool)),
    ("torch", "float8_e4m3fn", Global::DType(DType::F8E4M3)),
    ("torch", "float8_e5m2", Global::DType(DType::F8E5M2)),
];

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        GLOBALS
            .iter()
            .find(|(m, n, _)| *m == module && *n == name)
            .map(|&(_, _, g)| g)
    }

    /// `module.name`, as the pickle spelled it.
    fn qualified_name(self) -> String {
        GLOBALS
            .iter()
            .find(|(_, _, g)| *g == self)
            .map(|(m, n, _)| format!("{m}.{n}"))
            .unwrap_or_default()
    }
}

/// A storage named by a persistent id `('storage', type, key, location, numel)`.
pub(super) struct StorageRef {
    /// Element type, from the storage class.
    pub dtype: DType,
    /// The key (a [`Obj::Str`]): the bytes are the zip member `<prefix>/data/<key>`.
    pub key: Id,
    /// Number of elements.
    pub numel: usize,
}

/// The arguments of a `_rebuild_tensor_v2` call.
pub(super) struct TensorRef {
    /// The storage (a [`Obj::Storage`]).
    pub storage: Id,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Dimensions.
    pub size: Vec<usize>,
    /// Strides in elements, one per dimension.
    pub stride: Vec<usize>,
}

/// The object graph of one pickle.
pub(super) struct Pickle {
    /// Every object created, indexed by [`Id`].
    pub objs: Vec<Obj>,
    /// The object STOP returned.
    pub root: Id,
}

impl Pickle {
    /// The object `id`.
    pub(super) fn get(&self, id: Id) -> &Obj {
        &self.objs[id]
    }
}

/// Unpickles `data` (the member `member` of `path`).
pub(super) fn parse(data: &[u8], path: &Path, member: &str) -> Result<Pickle> {
    Machine {
        data,
        pos: 0,
        op_pos: 0,
        op: 0,
        path,
        member,
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and byte of the opcode being executed, for error messages.
    op_pos: usize,
    op: u8,
    path: &'a Path,
    member: &'a str,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn run(mut self) -> Result<Pickle> {
        loop {
            self.op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(self.bad_at(
                    self.pos,
                    "the pickle ends without a STOP opcode (truncated?)",
                ));
            };
            self.pos += 1;
            self.op = op;
            match op {
                op::PROTO => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.bad(format!("unsupported pickle protocol {v}")));
                    }
                }
                // FRAME: the frame length is advisory; the opcodes follow in line.
                op::FRAME => {
                    self.take(8)?;
                }
                op::STOP => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        objs: self.objs,
                        root,
                    });
                }
                op::EMPTY_DICT => self.push_new(Obj::Dict(Vec::new()))?,
                op::EMPTY_LIST => self.push_new(Obj::List(Vec::new()))?,
                op::EMPTY_TUPLE => self.push_new(Obj::Tuple(Vec::new()))?,
                op::MARK => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.bad("too many nested MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_new(Obj::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(op - op::TUPLE1 + 1);
                    let items = self.pop_n(n)?;
                    self.push_new(Obj::Tuple(items))?;
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.push_new(Obj::List(items))?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_new(Obj::Dict(pairs))?;
                }
                op::BINUNICODE => {
                    let n = u64::from(self.u32()?);
                    self.string(n)?;
                }
                op::SHORT_BINUNICODE => {
                    let n = u64::from(self.u8()?);
                    self.string(n)?;
                }
                op::BINUNICODE8 => {
                    let n = self.u64()?;
                    self.string(n)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push_new(Obj::Int(v.into()))?;
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push_new(Obj::Int(v.into()))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push_new(Obj::Int(v.into()))?;
                }
                op::LONG1 => {
                    let n = u64::from(self.u8()?);
                    self.long(n)?;
                }
                op::LONG4 => {
                    let n = u64::from(self.u32()?);
                    self.long(n)?;
                }
                op::BINFLOAT => {
                    self.take(8)?;
                    self.push_new(Obj::Float)?;
                }
                op::NONE => self.push_new(Obj::None)?,
                op::NEWTRUE | op::NEWFALSE => self.push_new(Obj::Bool)?,
                op::BINPUT => {
                    let i = u32::from(self.u8()?);
                    self.memoize(i)?;
                }
                op::LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memoize(i)?;
                }
                op::MEMOIZE => {
                    // MAX_MEMO keeps the memo length far below u32::MAX.
                    let i = self.memo.len() as u32;
                    self.memoize(i)?;
                }
                op::BINGET => {
                    let i = u32::from(self.u8()?);
                    self.memo_get(i)?;
                }
                op::LONG_BINGET => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.dict_target()?.push((k, v));
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.dict_target()?.extend(pairs);
                }
                op::APPEND => {
                    let v = self.pop()?;
                    self.list_target()?.push(v);
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.list_target()?.extend(items);
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = self.lookup(module, name)?;
                    self.push_new(Obj::Global(global))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let global = match (&self.objs[module], &self.objs[name]) {
                        (Obj::Str(m), Obj::Str(n)) => self.lookup(m, n),
                        (m, n) => Err(self.bad(format!(
                            "STACK_GLOBAL of a {} and a {}, not two strings",
                            m.kind(),
                            n.kind()
                        ))),
                    }?;
                    self.push_new(Obj::Global(global))?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.reduce(func, args)?;
                }
                op::BUILD => {
                    // The state of an OrderedDict is its instance `__dict__` (`_metadata` of a
                    // module state dict) and that of a tensor its Python attributes: neither
                    // holds weights, so it is dropped.
                    self.pop()?;
                    let target = *self
                        .stack
                        .last()
                        .ok_or_else(|| self.bad("BUILD on an empty stack"))?;
                    match &self.objs[target] {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        other => {
                            let what = format!(
                                "BUILD on a {}; only dicts and tensors are supported",
                                other.kind()
                            );
                            return Err(self.bad(what));
                        }
                    }
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push_new(Obj::Storage(storage))?;
                }
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                _ => {
                    return Err(self.bad(format!("unsupported pickle opcode 0x{op:02x}")));
                }
            }
        }
    }

    /// A [`Error::BadFile`] naming the member, the current opcode and its offset.
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        self.at().bad(what)
    }

    fn at(&self) -> At<'a> {
        At {
            path: self.path,
            member: self.member,
            op: self.op,
            op_pos: self.op_pos,
        }
    }

    fn bad_at(&self, pos: usize, what: &str) -> Error {
        Error::bad_file(
            self.path,
            format!("`{}`: {what} (at byte {pos})", self.member),
        )
    }

    /// The next `n` bytes, or an error when fewer remain. Nothing is allocated.
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left as u64 {
            return Err(self.bad(format!(
                "needs {n} bytes but only {left} remain (truncated?)"
            )));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A newline-terminated UTF-8 argument of GLOBAL.
    fn line(&mut self) -> Result<&'a str> {
        let data = self.data;
        let rest = &data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.bad("GLOBAL argument has no terminating newline (truncated?)"))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.bad("GLOBAL argument is not UTF-8"))
    }

    fn string(&mut self, n: u64) -> Result<()> {
        let bytes = self.take(n)?;
        let s = match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(e) => return Err(self.bad(format!("string is not UTF-8: {e}"))),
        };
        self.push_new(Obj::Str(s))
    }

    /// LONG1/LONG4: a little-endian two's-complement integer of `n` bytes, which must fit i64.
    fn long(&mut self, n: u64) -> Result<()> {
        let bytes = self.take(n)?;
        let (low, high) = bytes.split_at(bytes.len().min(8));
        let negative = low.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        if high.iter().any(|&b| b != fill) {
            return Err(self.bad(format!("integer of {n} bytes does not fit 64 bits")));
        }
        let mut buf = [fill; 8];
        buf[..low.len()].copy_from_slice(low);
        self.push_new(Obj::Int(i64::from_le_bytes(buf)))
    }

    fn push(&mut self, id: Id) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.bad(format!("stack grows past {MAX_STACK} items")));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, obj: Obj) -> Result<()> {
        if self.objs.len() >= MAX_OBJECTS {
            return Err(self.bad(format!(
                "the pickle creates more than {MAX_OBJECTS} objects"
            )));
        }
        self.objs.push(obj);
        self.push(self.objs.len() - 1)
    }

    /// Pops one item; never reaches below the innermost MARK.
    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() > floor {
            if let Some(id) = self.stack.pop() {
                return Ok(id);
            }
        }
        let what = if self.stack.is_empty() {
            "pops an empty stack"
        } else {
            "pops across a MARK"
        };
        Err(self.bad(what))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err(self.bad(format!("needs {n} stack items")));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// Pops everything above the innermost MARK, and the MARK.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.bad("no MARK to pop to"))?;
        // `pop` never goes below a mark, so the stack still reaches it.
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad(format!(
                "odd number of items ({}) for key/value pairs",
                items.len()
            )));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn target(&self) -> Result<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.bad("no container on the stack"))
    }

    fn dict_target(&mut self) -> Result<&mut Vec<(Id, Id)>> {
        let t = self.target()?;
        let at = self.at();
        match &mut self.objs[t] {
            Obj::Dict(d) => Ok(d),
            other => Err(at.bad(format!("sets items on a {}, not a dict", other.kind()))),
        }
    }

    fn list_target(&mut self) -> Result<&mut Vec<Id>> {
        let t = self.target()?;
        let at = self.at();
        match &mut self.objs[t] {
            Obj::List(l) => Ok(l),
            other => Err(at.bad(format!("appends to a {}, not a list", other.kind()))),
        }
    }

    fn memoize(&mut self, i: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .copied()
            .ok_or_else(|| self.bad("memoizes an empty stack"))?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&i) {
            return Err(self.bad(format!("memo grows past {MAX_MEMO} entries")));
        }
        self.memo.insert(i, top);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Result<()> {
        let id = *self
            .memo
            .get(&i)
            .ok_or_else(|| self.bad(format!("memo entry {i} was never stored")))?;
        self.push(id)
    }

    /// The allow-listed global `module.name`, or [`Error::ForbiddenGlobal`].
    fn lookup(&self, module: &str, name: &str) -> Result<Global> {
        Global::lookup(module, name).ok_or_else(|| Error::ForbiddenGlobal {
            path: self.path.to_path_buf(),
            global: format!("{}.{}", quote(module), quote(name)),
        })
    }

    /// REDUCE: applies an allow-listed callable to an argument tuple.
    fn reduce(&mut self, func: Id, args: Id) -> Result<()> {
        let g = match self.objs[func] {
            Obj::Global(g) => g,
            ref other => {
                return Err(self.bad(format!("REDUCE applies a {}, not a callable", other.kind())))
            }
        };
        let Obj::Tuple(args) = &self.objs[args] else {
            let what = format!(
                "arguments of `{}` are a {}, not a tuple",
                g.qualified_name(),
                self.objs[args].kind()
            );
            return Err(self.bad(what));
        };
        let arity: &[usize] = match g {
            Global::OrderedDict => &[0],
            Global::RebuildTensorV2 => &[6, 7],
            Global::RebuildParameter => &[3],
            Global::RebuildParameterWithState => &[4],
            Global::Storage(_) | Global::DType(_) => {
                let what = format!(
                    "REDUCE applies `{}`, which is allowed only as a value, not called",
                    g.qualified_name()
                );
                return Err(self.bad(what));
            }
        };
        if !arity.contains(&args.len()) {
            let what = format!(
                "`{}` called with {} arguments, expected {arity:?}",
                g.qualified_name(),
                args.len()
            );
            return Err(self.bad(what));
        }
        match g {
            Global::OrderedDict => self.push_new(Obj::Dict(Vec::new())),
            Global::RebuildTensorV2 => {
                let t = self.tensor_args(args)?;
                self.push_new(Obj::Tensor(t))
            }
            // A parameter is its data tensor; requires_grad, hooks and state do not matter here.
            _ => {
                let data = args[0];
                if !matches!(self.objs[data], Obj::Tensor(_)) {
                    let what = format!(
                        "`{}` of a {}, not a tensor",
                        g.qualified_name(),
                        self.objs[data].kind()
                    );
                    return Err(self.bad(what));
                }
                self.push(data)
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])`.
    fn tensor_args(&self, args: &[Id]) -> Result<TensorRef> {
        if !matches!(self.objs[args[0]], Obj::Storage(_)) {
            return Err(self.bad(format!(
                "tensor rebuilt from a {}, not a storage",
                self.objs[args[0]].kind()
            )));
        }
        let offset = self.index(args[1], "storage offset")?;
        let size = self.dims(args[2], "size")?;
        let stride = self.dims(args[3], "stride")?;
        if size.len() != stride.len() {
            return Err(self.bad(format!(
                "tensor size {size:?} and stride {stride:?} differ in rank"
            )));
        }
        Ok(TensorRef {
            storage: args[0],
            offset,
            size,
            stride,
        })
    }

    /// A non-negative int.
    fn index(&self, id: Id, what: &str) -> Result<usize> {
        match self.objs[id] {
            Obj::Int(v) => usize::try_from(v)
                .map_err(|_| self.bad(format!("{what} {v} is negative or too large"))),
            ref other => Err(self.bad(format!("{what} is a {}, not an int", other.kind()))),
        }
    }

    /// A tuple of non-negative ints (a tensor size or stride).
    fn dims(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        let Obj::Tuple(items) = &self.objs[id] else {
            return Err(self.bad(format!(
                "tensor {what} is a {}, not a tuple",
                self.objs[id].kind()
            )));
        };
        if items.len() > MAX_RANK {
            return Err(self.bad(format!(
                "tensor {what} has {} dimensions, more than {MAX_RANK}",
                items.len()
            )));
        }
        items
            .iter()
            .map(|&i| self.index(i, &format!("tensor {what} entry")))
            .collect()
    }

    /// BINPERSID: `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: Id) -> Result<StorageRef> {
        let shape_error =
            || self.bad("persistent id is not ('storage', storage type, key, location, numel)");
        let Obj::Tuple(items) = &self.objs[pid] else {
            return Err(shape_error());
        };
        let [tag, ty, key, location, numel] = items[..] else {
            return Err(shape_error());
        };
        match (
            &self.objs[tag],
            &self.objs[ty],
            &self.objs[key],
            &self.objs[location],
        ) {
            (Obj::Str(tag), Obj::Global(Global::Storage(dtype)), Obj::Str(_), Obj::Str(_))
                if tag == "storage" =>
            {
                let numel = self.index(numel, "storage size")?;
                Ok(StorageRef {
                    dtype: *dtype,
                    key,
                    numel,
                })
            }
            _ => Err(shape_error()),
        }
    }
}

/// Where an error happened: the member, the opcode and its offset.
#[derive(Clone, Copy)]
struct At<'a> {
    path: &'a Path,
    member: &'a str,
    op: u8,
    op_pos: usize,
}

impl At<'_> {
    fn bad(self, what: impl std::fmt::Display) -> Error {
        Error::bad_file(
            self.path,
            format!(
                "`{}`: {what} (opcode {} at byte {})",
                self.member,
                op_name(self.op),
                self.op_pos
            ),
        )
    }
}

/// `s`, shortened for quoting in an error message.
fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        return s.to_string();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
