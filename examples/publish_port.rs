//! The README's library example: publish port 80 of namespace `ns1` as host port 8080, list
//! what is published, and unpublish it again. Run as root with a namespace `ns1`.

use nsport::{PublishOptions, Target};

fn main() -> Result<(), nsport::Error> {
    let target = Target::Netns("ns1".into());
    let made = nsport::publish(&target, &PublishOptions::default(), &["8080:80".parse()?])?;
    println!("published {} mappings", made.len());
    for mapping in nsport::list()? {
        println!(
            "{}/{} -> {}:{}",
            mapping.host_port, mapping.proto, mapping.to_addr, mapping.to_port
        );
    }
    nsport::unpublish(&["8080".parse()?], false)?;
    Ok(())
}
