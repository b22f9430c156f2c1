use events_core::domain_event;

#[domain_event]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
