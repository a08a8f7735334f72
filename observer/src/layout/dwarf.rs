//! Struct and enum layouts read from DWARF (`gimli`): member offsets, sizes, and the variant
//! discriminants rustc records (`DW_TAG_variant_part` / `DW_AT_discr_value`).
//!
//! Pure: it reads bytes. Types are found by their full Rust path, built from the namespaces that
//! enclose them (`temporalio_protos::protos::coresdk::workflow_activation::WorkflowActivation`).

use std::{borrow::Cow, collections::HashMap};

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset, constants};
use object::{Object, ObjectSection};

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("not an ELF file we can read: {0}")]
    Object(#[from] object::Error),
    #[error("malformed DWARF: {0}")]
    Gimli(#[from] gimli::Error),
    #[error("the binary has no DWARF type information")]
    NoDwarf,
    #[error("type `{0}` is not in the binary's DWARF")]
    MissingType(String),
    #[error("type `{ty}` has no member `{member}`")]
    MissingMember { ty: String, member: String },
    #[error("type `{ty}`: {what}")]
    Unsupported { ty: String, what: String },
}

/// Where a type's DIE is: which unit, and the offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeRef {
    unit: usize,
    offset: UnitOffset<usize>,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub ty: Option<TypeRef>,
}

#[derive(Clone, Debug)]
pub struct Variant {
    /// The variant's name (the member inside `DW_TAG_variant`).
    pub name: String,
    /// The raw value the discriminant field holds for this variant; `None` for the dataful
    /// variant of a niche-encoded enum (it owns every value no other variant names).
    pub discr: Option<u64>,
    /// Offset of the variant's payload (its `__0` field) from the enum's start.
    pub payload_offset: u64,
    pub payload: Option<TypeRef>,
}

#[derive(Clone, Debug)]
pub struct VariantPart {
    pub discr_offset: u64,
    pub discr_size: u64,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug)]
pub struct TypeInfo {
    pub name: String,
    pub size: u64,
    pub members: Vec<Member>,
    pub variant_part: Option<VariantPart>,
    /// A pointer or reference type (its valid values depend on which: see `niche`).
    pub is_pointer: bool,
}

impl TypeInfo {
    pub fn member(&self, name: &str) -> Result<&Member, DwarfError> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| DwarfError::MissingMember {
                ty: self.name.clone(),
                member: name.to_string(),
            })
    }
}

/// The DWARF of one binary, with every struct/union/enum indexed by its full path.
pub struct DwarfTypes<'data> {
    dwarf: gimli::Dwarf<Reader<'data>>,
    units: Vec<gimli::Unit<Reader<'data>>>,
    by_path: HashMap<String, TypeRef>,
    /// Out-of-line function bodies by entry address (`DW_AT_low_pc`).
    functions: HashMap<u64, TypeRef>,
}

/// Where a function's parameter is at its first instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryLocation {
    /// The value is in this (DWARF-numbered) register.
    Register(u16),
    /// The value is in memory at the address this register holds (a by-value argument passed
    /// by reference, as rustc does for large structs).
    PointedToBy(u16),
    /// Anywhere else (stack, constant, optimized out): not readable by an entry probe.
    Elsewhere,
}

/// One formal parameter of a function, as at its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub at_entry: EntryLocation,
}

impl std::fmt::Debug for DwarfTypes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfTypes")
            .field("types", &self.by_path.len())
            .finish()
    }
}

/// Holds the section bytes (decompressed where needed) that `DwarfTypes` borrows.
#[derive(Debug)]
pub struct DwarfSections<'data>(gimli::DwarfSections<Cow<'data, [u8]>>);

impl<'data> DwarfSections<'data> {
    pub fn load(data: &'data [u8]) -> Result<Self, DwarfError> {
        let file = object::File::parse(data)?;
        if file.section_by_name(".debug_info").is_none() {
            return Err(DwarfError::NoDwarf);
        }
        let sections =
            gimli::DwarfSections::load(|id| -> Result<Cow<'data, [u8]>, object::Error> {
                match file.section_by_name(id.name()) {
                    Some(section) => section.uncompressed_data(),
                    None => Ok(Cow::Borrowed(&[][..])),
                }
            })?;
        Ok(Self(sections))
    }

    pub fn types(&self) -> Result<DwarfTypes<'_>, DwarfError> {
        let dwarf = self
            .0
            .borrow(|section| EndianSlice::new(section, RunTimeEndian::Little));
        DwarfTypes::index(dwarf)
    }
}

impl<'data> DwarfTypes<'data> {
    fn index(dwarf: gimli::Dwarf<Reader<'data>>) -> Result<Self, DwarfError> {
        let mut units = Vec::new();
        let mut by_path = HashMap::new();
        let mut functions = HashMap::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let unit = dwarf.unit(header)?;
            let unit_index = units.len();
            let mut path: Vec<(isize, String)> = Vec::new();
            let mut depth = 0isize;
            let mut entries = unit.entries();
            while let Some((delta, entry)) = entries.next_dfs()? {
                depth += delta;
                while path.last().is_some_and(|(d, _)| *d >= depth) {
                    path.pop();
                }
                let tag = entry.tag();
                if tag == constants::DW_TAG_subprogram
                    && let Some(AttributeValue::Addr(low_pc)) =
                        entry.attr_value(constants::DW_AT_low_pc)?
                {
                    functions.entry(low_pc).or_insert(TypeRef {
                        unit: unit_index,
                        offset: entry.offset(),
                    });
                }
                let named_scope = matches!(
                    tag,
                    constants::DW_TAG_namespace
                        | constants::DW_TAG_structure_type
                        | constants::DW_TAG_union_type
                        | constants::DW_TAG_enumeration_type
                );
                if !named_scope {
                    continue;
                }
                let Some(name) = entry.attr_value(constants::DW_AT_name)? else {
                    continue;
                };
                let name = dwarf
                    .attr_string(&unit, name)?
                    .to_string_lossy()
                    .into_owned();
                let full = path
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .chain(std::iter::once(name.as_str()))
                    .collect::<Vec<_>>()
                    .join("::");
                let is_declaration = entry.attr_value(constants::DW_AT_declaration)?.is_some();
                if tag != constants::DW_TAG_namespace && !is_declaration {
                    by_path.entry(full).or_insert(TypeRef {
                        unit: unit_index,
                        offset: entry.offset(),
                    });
                }
                path.push((depth, name));
            }
            units.push(unit);
        }
        if by_path.is_empty() {
            return Err(DwarfError::NoDwarf);
        }
        Ok(Self {
            dwarf,
            units,
            by_path,
            functions,
        })
    }

    /// The parameters of the function whose code starts at `address`, with where each one is
    /// at that first instruction; `None` when the DWARF does not describe that function.
    pub fn params_at(&self, address: u64) -> Result<Option<Vec<Param>>, DwarfError> {
        let Some(function) = self.functions.get(&address).copied() else {
            return Ok(None);
        };
        let unit = &self.units[function.unit];
        let mut tree = unit.entries_tree(Some(function.offset))?;
        let root = tree.root()?;
        let mut params = Vec::new();
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if entry.tag() != constants::DW_TAG_formal_parameter {
                continue;
            }
            let name = self.name_or_origin_name(function.unit, entry)?;
            let at_entry = match entry.attr_value(constants::DW_AT_location)? {
                Some(AttributeValue::Exprloc(expr)) => entry_location(expr, unit.encoding())?,
                Some(value) => match self.dwarf.attr_locations(unit, value)? {
                    Some(mut list) => {
                        let mut found = EntryLocation::Elsewhere;
                        while let Some(range) = list.next()? {
                            if range.range.begin <= address && address < range.range.end {
                                found = entry_location(range.data, unit.encoding())?;
                                break;
                            }
                        }
                        found
                    }
                    None => EntryLocation::Elsewhere,
                },
                None => EntryLocation::Elsewhere,
            };
            params.push(Param {
                name: name.unwrap_or_default(),
                at_entry,
            });
        }
        Ok(Some(params))
    }

    /// An entry's name, or the name of the abstract entry it instantiates (LTO and inlining
    /// leave concrete parameters that only point at their declaration).
    fn name_or_origin_name(
        &self,
        unit: usize,
        entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'data>>,
    ) -> Result<Option<String>, DwarfError> {
        let u = &self.units[unit];
        if let Some(v) = entry.attr_value(constants::DW_AT_name)? {
            return Ok(Some(
                self.dwarf.attr_string(u, v)?.to_string_lossy().into_owned(),
            ));
        }
        let origin = self.type_ref(unit, entry.attr_value(constants::DW_AT_abstract_origin)?);
        match origin {
            Some(origin) => {
                let origin_unit = &self.units[origin.unit];
                let origin_entry = origin_unit.entry(origin.offset)?;
                match origin_entry.attr_value(constants::DW_AT_name)? {
                    Some(v) => Ok(Some(
                        self.dwarf
                            .attr_string(origin_unit, v)?
                            .to_string_lossy()
                            .into_owned(),
                    )),
                    None => Ok(None),
                }
            }
            None => Ok(None),
        }
    }

    /// Number of types indexed.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    pub fn find(&self, path: &str) -> Result<TypeRef, DwarfError> {
        self.by_path
            .get(path)
            .copied()
            .ok_or_else(|| DwarfError::MissingType(path.to_string()))
    }

    /// Reads a struct, union or Rust enum: size, members, and the variant part if any.
    pub fn info(&self, ty: TypeRef) -> Result<TypeInfo, DwarfError> {
        let unit = &self.units[ty.unit];
        let mut tree = unit.entries_tree(Some(ty.offset))?;
        let root = tree.root()?;
        let entry = root.entry();
        let name = match entry.attr_value(constants::DW_AT_name)? {
            Some(v) => self
                .dwarf
                .attr_string(unit, v)?
                .to_string_lossy()
                .into_owned(),
            None => String::from("<anonymous>"),
        };
        let size = udata(entry.attr_value(constants::DW_AT_byte_size)?).unwrap_or(0);
        let mut info = TypeInfo {
            name,
            size,
            members: Vec::new(),
            variant_part: None,
            is_pointer: matches!(
                entry.tag(),
                constants::DW_TAG_pointer_type | constants::DW_TAG_reference_type
            ),
        };
        let mut children = root.children();
        while let Some(child) = children.next()? {
            match child.entry().tag() {
                constants::DW_TAG_member => info.members.push(self.member(ty.unit, child.entry())?),
                constants::DW_TAG_variant_part => {
                    info.variant_part = Some(self.variant_part(ty, child)?);
                }
                _ => {}
            }
        }
        Ok(info)
    }

    fn member(
        &self,
        unit: usize,
        entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'data>>,
    ) -> Result<Member, DwarfError> {
        let u = &self.units[unit];
        let name = match entry.attr_value(constants::DW_AT_name)? {
            Some(v) => self.dwarf.attr_string(u, v)?.to_string_lossy().into_owned(),
            None => String::new(),
        };
        let offset = udata(entry.attr_value(constants::DW_AT_data_member_location)?).unwrap_or(0);
        let ty = self.type_ref(unit, entry.attr_value(constants::DW_AT_type)?);
        Ok(Member { name, offset, ty })
    }

    fn variant_part(
        &self,
        owner: TypeRef,
        node: gimli::EntriesTreeNode<'_, '_, '_, Reader<'data>>,
    ) -> Result<VariantPart, DwarfError> {
        let discr_ref = match node.entry().attr_value(constants::DW_AT_discr)? {
            Some(AttributeValue::UnitRef(offset)) => Some(offset),
            _ => None,
        };
        let mut discr: Option<(u64, u64)> = None;
        let mut variants = Vec::new();
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            match entry.tag() {
                constants::DW_TAG_member
                    if Some(entry.offset()) == discr_ref || discr_ref.is_none() =>
                {
                    let m = self.member(owner.unit, entry)?;
                    let size = match m.ty {
                        Some(t) => self.byte_size(t)?,
                        None => 0,
                    };
                    discr = Some((m.offset, size));
                }
                constants::DW_TAG_variant => {
                    let value = udata(entry.attr_value(constants::DW_AT_discr_value)?);
                    let mut inner = child.children();
                    while let Some(member) = inner.next()? {
                        if member.entry().tag() != constants::DW_TAG_member {
                            continue;
                        }
                        let m = self.member(owner.unit, member.entry())?;
                        // The member's type is a struct named after the variant, holding `__0`.
                        let (payload_offset, payload) = match m.ty {
                            Some(t) => {
                                let wrapper = self.info(t)?;
                                match wrapper.members.iter().find(|f| f.name == "__0") {
                                    Some(field) => (m.offset + field.offset, field.ty),
                                    None => (m.offset, None),
                                }
                            }
                            None => (m.offset, None),
                        };
                        variants.push(Variant {
                            name: m.name,
                            discr: value,
                            payload_offset,
                            payload,
                        });
                    }
                }
                _ => {}
            }
        }
        let (discr_offset, discr_size) = discr.ok_or_else(|| DwarfError::Unsupported {
            ty: format!("{owner:?}"),
            what: "variant part without a discriminant member".into(),
        })?;
        Ok(VariantPart {
            discr_offset,
            discr_size,
            variants,
        })
    }

    fn byte_size(&self, ty: TypeRef) -> Result<u64, DwarfError> {
        let unit = &self.units[ty.unit];
        let entry = unit.entry(ty.offset)?;
        Ok(udata(entry.attr_value(constants::DW_AT_byte_size)?).unwrap_or(0))
    }

    fn type_ref(
        &self,
        unit: usize,
        value: Option<AttributeValue<Reader<'data>>>,
    ) -> Option<TypeRef> {
        match value? {
            AttributeValue::UnitRef(offset) => Some(TypeRef { unit, offset }),
            AttributeValue::DebugInfoRef(global) => {
                self.units.iter().enumerate().find_map(|(i, u)| {
                    global
                        .to_unit_offset(&u.header)
                        .map(|offset| TypeRef { unit: i, offset })
                })
            }
            _ => None,
        }
    }
}

/// Reads a location expression that is a single register, or a single register-relative
/// address with offset 0; anything else cannot be read by an entry probe.
fn entry_location(
    expr: gimli::Expression<Reader<'_>>,
    encoding: gimli::Encoding,
) -> Result<EntryLocation, DwarfError> {
    let mut ops = expr.operations(encoding);
    let first = ops.next()?;
    if ops.next()?.is_some() {
        return Ok(EntryLocation::Elsewhere);
    }
    Ok(match first {
        Some(gimli::Operation::Register { register }) => EntryLocation::Register(register.0),
        Some(gimli::Operation::RegisterOffset {
            register,
            offset: 0,
            ..
        }) => EntryLocation::PointedToBy(register.0),
        _ => EntryLocation::Elsewhere,
    })
}

fn udata<R: gimli::Reader>(value: Option<AttributeValue<R>>) -> Option<u64> {
    match value? {
        AttributeValue::Udata(v) => Some(v),
        AttributeValue::Data1(v) => Some(v.into()),
        AttributeValue::Data2(v) => Some(v.into()),
        AttributeValue::Data4(v) => Some(v.into()),
        AttributeValue::Data8(v) => Some(v),
        AttributeValue::Sdata(v) => Some(v as u64),
        _ => None,
    }
}
